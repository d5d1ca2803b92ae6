"""Provider simulator: an HTTP server speaking inference providers' APIs (chat completions,
`/v1/models` with pricing, the cost endpoint) with switchable faults, for development,
end-to-end tests and benchmarks. Independent of Django.

`simulator.app` (the ASGI application and the endpoint reference), `simulator.costs` (the
deterministic cost function), `simulator.chat` (the deterministic answers), `simulator.faults`
(the switches). Run it with `python -m simulator --port 8001`; see docs/simulator.md.
"""
