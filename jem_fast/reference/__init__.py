"""Pure-PyTorch reference implementations: the official formulas, materialized as written.

They are the oracle of the tests (run in float64) and the baseline of the benchmarks (run in the
benchmark dtype, eager and under torch.compile). Deliberately unoptimized.
"""
from .vicreg import vicreg_loss_reference, vicreg_terms_reference
from .barlow_twins import barlow_twins_loss_reference, barlow_twins_terms_reference
from .info_nce import info_nce_loss_reference, ntxent_loss_reference
from .clustering import (dino_loss_reference, sinkhorn_knopp_log_reference,
                         sinkhorn_knopp_reference, swav_loss_reference)
from .deepcluster import assign_to_centroids_reference, deepcluster_v2_loss_reference
from .wmse import norm_mse_reference, whiten_reference, wmse_loss_reference
from .negative_cosine import (byol_loss_reference, negative_cosine_reference,
                              symmetric_negative_cosine_reference)
from .augment import augment_reference

__all__ = ["vicreg_loss_reference", "vicreg_terms_reference", "barlow_twins_loss_reference",
           "barlow_twins_terms_reference", "ntxent_loss_reference", "info_nce_loss_reference",
           "sinkhorn_knopp_reference", "sinkhorn_knopp_log_reference", "swav_loss_reference",
           "dino_loss_reference", "assign_to_centroids_reference",
           "deepcluster_v2_loss_reference", "norm_mse_reference", "whiten_reference",
           "wmse_loss_reference", "negative_cosine_reference",
           "symmetric_negative_cosine_reference", "byol_loss_reference",
           "augment_reference"]
