"""Songs on disk: the dataset format, audio loading, the feature cache, batching."""
