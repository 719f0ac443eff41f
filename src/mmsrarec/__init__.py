"""mmsrarec: multimodal sequential recommendation with LLM keyword summaries, collaborative keyword
retrieval and an LLM ranker, in the MMSRARec style."""

__version__ = "0.3.4"  # moves with user-visible changes (CHANGELOG.md)

# Part of every stage key and ledger fingerprint. Apart from __version__ so that a release does not make
# every finished stage and ledger row stale: a change to what one stage writes raises that stage's
# `revision` (stages.py); this moves only when every artifact's meaning changes at once.
ARTIFACTS_VERSION = "0.1.0"
