"""The comparison rows of the paper's table: late masking, Group DRO and the linear probe."""

from __future__ import annotations

import torch

from hardmask.losses import Criterion
from hardmask.losses.group_dro import GroupDRO
from hardmask.models import VARIANTS
from tests.conftest import PAPER
from tests.models.tiny import GRID, IMAGE_SIZE, images, pixel_mask_of, tiny_model


def _top_half_foreground(batch: int) -> torch.Tensor:
    fg = torch.zeros(batch, IMAGE_SIZE, IMAGE_SIZE)
    fg[:, : IMAGE_SIZE // 2] = 1
    return fg


def test_late_masking_pools_only_foreground_tokens_which_background_pixels_still_reach():
    late, early = tiny_model("late_mask_oracle").eval(), tiny_model("oracle_mask").eval()
    x, fg = images(2), _top_half_foreground(2)
    with torch.no_grad():
        out = late(x, fg_mask=fg)
        tokens = late.backbone.forward_features(x)[:, late.backbone.num_prefix_tokens :]  # [B,N,D]
        kept = out.hard_mask.view(2, GRID, GRID)
        assert kept[:, : GRID // 2].all() and not kept[:, GRID // 2 :].any()
        pooled = tokens[out.hard_mask.view(2, -1)].view(2, -1, tokens.shape[-1]).mean(1)  # foreground only
        torch.testing.assert_close(out.logits, late.head(late.fc_norm(pooled)))

        # new background pixels: the late mask's foreground features change (attention saw the whole
        # image); early masking's logits do not (its stage 2 never attends to background tokens)
        background = ~pixel_mask_of(out.hard_mask)[:, None]  # [B,1,H,W]
        changed = torch.where(background, torch.randn_like(x), x)
        assert not torch.allclose(late(changed, fg_mask=fg).logits, out.logits)
        torch.testing.assert_close(
            early(changed, fg_mask=fg).logits, early(x, fg_mask=fg).logits, rtol=0, atol=0
        )


def test_group_dro_weights_the_worst_group_up():
    dro = GroupDRO(num_groups=3, step_size=0.5)
    logits = torch.tensor([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [0.0, 4.0]])
    labels = torch.tensor([0, 0, 0, 0])  # the last two (group 2) are wrong: a high loss
    groups = torch.tensor([0, 0, 2, 2])  # group 1 is absent from the batch
    for _ in range(3):
        loss = dro(logits, labels, groups)
    per_group = torch.stack(
        [
            torch.nn.functional.cross_entropy(logits[:2], labels[:2]),
            torch.tensor(0.0),
            torch.nn.functional.cross_entropy(logits[2:], labels[2:]),
        ]
    ).double()
    # three exponentiated-gradient steps from uniform weights: q_g proportional to exp(3 * eta * loss_g)
    expected = torch.exp(3 * 0.5 * per_group)
    expected /= expected.sum()
    torch.testing.assert_close(dro.weights, expected)
    assert dro.weights.argmax() == 2 and dro.weights[2] > 0.99
    # the objective: the q-weighted sum of the groups' mean losses
    torch.testing.assert_close(loss.double(), (expected * per_group).sum(), rtol=1e-6, atol=1e-7)


def test_group_dro_criterion_needs_the_group_labels_and_checkpoints_its_weights():
    import pytest

    model = tiny_model("group_dro").train()
    criterion = Criterion(PAPER.loss, VARIANTS["group_dro"].losses, "group_dro", num_groups=4)
    x, labels = images(4), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="no group labels"):
        criterion(model, x, labels, model(x))
    criterion(model, x, labels, model(x), groups=torch.tensor([0, 1, 2, 3]))
    state = criterion.state_dict()
    restored = Criterion(PAPER.loss, VARIANTS["group_dro"].losses, "group_dro", num_groups=4)
    restored.load_state_dict(state)
    assert torch.equal(restored.group_dro.weights, criterion.group_dro.weights)
    assert not torch.equal(criterion.group_dro.weights, torch.full((4,), 0.25, dtype=torch.float64))


def test_linear_probe_trains_its_head_only():
    model = tiny_model("linear_probe")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc_norm.weight", "fc_norm.bias", "head.weight"}
    assert VARIANTS["linear_probe"].frozen_roles  # whatever the model.freeze_* flags say


def _group_dro_rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    features, labels, groups = _group_dro_batch()
    head = _group_dro_head()  # the same parameters on every rank, as DDP keeps them
    half = slice(rank * 3, rank * 3 + 3)
    dro = GroupDRO(num_groups=3, step_size=0.5)
    for _ in range(2):
        head.zero_grad()
        dro(head(features[half]), labels[half], groups[half]).backward()
    grad = head.weight.grad.clone()
    dist.all_reduce(grad)  # the trainer averages the gradients over ranks
    torch.save({"weights": dro.weights, "grad": grad / world}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def _group_dro_head() -> torch.nn.Linear:
    head = torch.nn.Linear(4, 2)
    with torch.no_grad():
        head.weight.copy_(torch.linspace(-1, 1, 8).view(2, 4))
        head.bias.zero_()
    return head


def _group_dro_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    features = torch.arange(24, dtype=torch.float32).view(6, 4).sin()
    labels = torch.tensor([0, 0, 0, 1, 1, 0])
    groups = torch.tensor([0, 0, 1, 2, 2, 1])  # rank 0 sees groups 0 and 1, rank 1 groups 2 and 1
    return features, labels, groups


def test_group_dro_under_ddp_is_the_single_process_algorithm_on_the_global_batch(tmp_path):
    # per-rank weights would differ (each rank raising its own batch's groups) and break resume from rank 0's
    import torch.multiprocessing as mp

    mp.spawn(_group_dro_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    features, labels, groups = _group_dro_batch()
    head = _group_dro_head()
    dro = GroupDRO(num_groups=3, step_size=0.5)
    for _ in range(2):
        head.zero_grad()
        dro(head(features), labels, groups).backward()
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(result["weights"], dro.weights, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(result["grad"], head.weight.grad, rtol=1e-5, atol=1e-7)
