"""The router stores nothing of its own: usage goes through billing's services."""
