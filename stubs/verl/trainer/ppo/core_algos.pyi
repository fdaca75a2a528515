# Partial stub: covers only what agentfly_min and its tests call (verl 0.9 API).
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

_F = TypeVar("_F", bound=Callable[..., Any])

def register_adv_est(name_or_enum: str) -> Callable[[_F], _F]: ...
def get_adv_estimator_fn(name_or_enum: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]: ...
def compute_grpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray[Any, Any],
    epsilon: float = ...,
    norm_adv_by_std_in_grpo: bool = ...,
    config: Any = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...
def agg_loss(loss_mat: torch.Tensor, loss_mask: torch.Tensor, loss_agg_mode: str, **kwargs: Any) -> torch.Tensor: ...
def get_policy_loss_fn(name: str) -> Callable[..., Any]: ...
