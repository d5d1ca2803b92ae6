"""The tasks a mapping can serve: the Hub's pipeline tags, plus `conversational` (chat)."""

CONVERSATIONAL = "conversational"
# Pipeline tags a chat model may carry (with the `conversational` tag) to serve `conversational`.
CHAT_PIPELINE_TAGS = frozenset({"text-generation", "image-text-to-text"})

PIPELINE_TAGS = frozenset(
    {
        "any-to-any", "audio-classification", "audio-text-to-text", "audio-to-audio",
        "automatic-speech-recognition", "depth-estimation", "document-question-answering",
        "feature-extraction", "fill-mask", "graph-ml", "image-classification",
        "image-feature-extraction", "image-segmentation", "image-text-to-text", "image-to-3d",
        "image-to-image", "image-to-text", "image-to-video", "keypoint-detection",
        "mask-generation", "object-detection", "question-answering", "reinforcement-learning",
        "robotics", "sentence-similarity", "summarization", "table-question-answering",
        "tabular-classification", "tabular-regression", "text-classification",
        "text-generation", "text-ranking", "text-retrieval", "text-to-3d", "text-to-audio",
        "text-to-image", "text-to-speech", "text-to-video", "text2text-generation",
        "time-series-forecasting", "token-classification", "translation",
        "unconditional-image-generation", "video-classification", "video-text-to-text",
        "video-to-video", "visual-document-retrieval", "visual-question-answering",
        "voice-activity-detection", "zero-shot-classification",
        "zero-shot-image-classification", "zero-shot-object-detection", "other",
    }
)  # fmt: skip
TASKS = PIPELINE_TAGS | {CONVERSATIONAL}


def model_supports_task(*, pipeline_tag: str, tags: list[str], task: str) -> bool:
    """The partner API's compatibility rule (docs: "Model Mapping API" > Validation)."""
    if pipeline_tag == task:
        return True
    return (
        task == CONVERSATIONAL and pipeline_tag in CHAT_PIPELINE_TAGS and (CONVERSATIONAL in tags)
    )
