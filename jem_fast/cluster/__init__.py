"""Clustering for DeepCluster-v2: distributed spherical k-means over a feature memory."""
from .kmeans import KMeansResult, cluster_memory, spherical_kmeans

__all__ = ["KMeansResult", "cluster_memory", "spherical_kmeans"]
