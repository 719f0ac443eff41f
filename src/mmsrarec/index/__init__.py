"""Collaborative retrieval: user vectors from a trained CF model, a FAISS index over training
windows, the k most similar training users per case, and their next items' keywords as context.

Modules: config (IndexConfig), windows (training windows, vectors), backends (faiss / torch search),
neighbours (similar users), store (files, manifest, checks), context (keyword rendering), stage (run).
"""
