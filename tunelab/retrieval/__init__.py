"""Dense retrieval: embeddings (embed.py), passage chunking and the vector index (index.py) behind
`tunelab index build / query`, the retrieval task's encoder and `tunelab ask --index`."""
