"""The indexer: loaders, chunking, embedding and the on-disk FAISS index."""
