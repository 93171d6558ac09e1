"""Functional entry points of the jem_fast ops (thin wrappers over torch.ops.jem_fast.*).

Importing this package registers the fake (meta) kernels and the autograd formulas of the
compiled ops, which is what makes torch.compile(fullgraph=True) and torch.library.opcheck work.
"""
from .vicreg import VICRegTerms, resolve_route, vicreg_terms
from .barlow_twins import BarlowTwinsTerms, barlow_twins_terms
from .info_nce import logsumexp_logits, logsumexp_self_logits
from .sinkhorn_knopp import sinkhorn_knopp
from .multiview_cross_entropy import centered_softmax, multiview_cross_entropy
from .assign_to_centroids import assign_to_centroids
from .negative_cosine import cosine_similarity_rows
from . import augment_views as _augment_views  # noqa: F401  (registers the fake kernel)

__all__ = ["VICRegTerms", "vicreg_terms", "BarlowTwinsTerms", "barlow_twins_terms",
           "resolve_route", "logsumexp_logits", "logsumexp_self_logits", "sinkhorn_knopp",
           "multiview_cross_entropy", "centered_softmax", "assign_to_centroids",
           "cosine_similarity_rows"]
