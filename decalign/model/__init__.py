"""The DecAlign model library: building blocks, losses and solvers, composed by ``DecAlign``."""

from .alignment import (
    decoupling_loss,
    decoupling_per_sample,
    gaussian_mmd,
    moment_matching_loss,
    moments,
    official_local_loss,
    official_local_loss_matrix,
    official_mmd,
    official_mmd_matrix,
    official_moment_distance,
    official_moment_distance_matrix,
    official_moments,
    sample_to_prototype_loss,
)
from .decalign import DecAlign, DistributionEncoder
from .output import AlignmentLevels, DecAlignOutput, Prototypes, TransportResult
from .prototypes import fit_gmm, fit_gmm_official, fit_prototypes, gaussian_log_likelihood, posteriors
from .transport import (
    gaussian_cost,
    joint_cost,
    multimarginal_sinkhorn,
    official_gaussian_cost,
    official_sinkhorn,
    plan_entropy,
    transport_plan,
)

__all__ = [
    "AlignmentLevels", "DecAlign", "DecAlignOutput", "DistributionEncoder", "Prototypes", "TransportResult",
    "decoupling_loss", "decoupling_per_sample", "fit_gmm", "fit_gmm_official", "fit_prototypes", "gaussian_cost",
    "gaussian_log_likelihood", "gaussian_mmd", "joint_cost", "moment_matching_loss", "moments",
    "multimarginal_sinkhorn", "official_gaussian_cost", "official_local_loss",
    "official_local_loss_matrix", "official_mmd", "official_mmd_matrix", "official_moment_distance",
    "official_moment_distance_matrix", "official_moments", "official_sinkhorn", "plan_entropy", "posteriors",
    "sample_to_prototype_loss", "transport_plan",
]
