"""mmsrarec: multimodal sequential recommendation with LLM keyword summaries, collaborative keyword
retrieval and an LLM ranker, in the MMSRARec style."""

__version__ = "0.1.0"
