"""The DecAlign model library: building blocks, losses and solvers, composed by ``DecAlign``."""

from .alignment import decoupling_loss, gaussian_mmd, moment_matching_loss, moments, sample_to_prototype_loss
from .decalign import DecAlign, DistributionEncoder
from .output import AlignmentLevels, DecAlignOutput, Prototypes, TransportResult
from .prototypes import fit_gmm, gaussian_log_likelihood, posteriors
from .transport import gaussian_cost, joint_cost, multimarginal_sinkhorn, plan_entropy, transport_plan

__all__ = [
    "AlignmentLevels", "DecAlign", "DecAlignOutput", "DistributionEncoder", "Prototypes", "TransportResult",
    "decoupling_loss", "fit_gmm", "gaussian_cost", "gaussian_log_likelihood", "gaussian_mmd", "joint_cost",
    "moment_matching_loss", "moments", "multimarginal_sinkhorn", "plan_entropy", "posteriors",
    "sample_to_prototype_loss", "transport_plan",
]
