"""eval.priors: the figures a prior is judged by, on known answers."""

import torch
import torch.nn.functional as F

from eval import priors
from unclip_repro.clip import TextEncoding


def _data(n=6, d=8):
    torch.manual_seed(0)
    z_i = F.normalize(torch.randn(n, d), dim=-1)
    z_t = F.normalize(z_i + 0.5 * torch.randn(n, d), dim=-1)
    text = TextEncoding(z_t, torch.zeros(n, 3, 4), torch.ones(n, 3, dtype=torch.bool))
    return {"z_i": z_i, "text": text, "canonical": ["a", "b", "c", "a", "d", "e"]}


def test_perfect_prior_scores_one_and_the_text_baseline_scores_its_alignment():
    data = _data()
    perfect = priors.score(data["z_i"], data)
    assert perfect["cos_true"] == 1.0 or abs(perfect["cos_true"] - 1) < 1e-6
    assert perfect["retrieval_exact"] == 1.0 and perfect["retrieval_match"] == 1.0
    z_t = data["text"].z_t
    baseline = priors.score(z_t, data)
    assert abs(baseline["cos_true"] - (z_t * data["z_i"]).sum(-1).mean().item()) < 1e-6
    assert abs(baseline["cos_text"] - 1) < 1e-6
    # unrelated: every pair of different captions, items 0 and 3 share one
    sims = data["z_i"] @ data["z_i"].T
    mask = torch.ones(6, 6, dtype=torch.bool)
    mask.fill_diagonal_(False)
    mask[0, 3] = mask[3, 0] = False
    assert abs(perfect["cos_unrelated"] - sims[mask].mean().item()) < 1e-6


def test_retrieval_match_counts_an_image_with_the_same_caption():
    data = _data()
    swapped = data["z_i"][[3, 1, 2, 0, 4, 5]]  # items 0 and 3 exchanged: same caption "a"
    result = priors.score(swapped, data)
    assert abs(result["retrieval_exact"] - 4 / 6) < 1e-6 and result["retrieval_match"] == 1.0


def test_missing_runs_is_a_one_line_error(tmp_path, capsys):
    assert priors.main(["--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no checkpoint" in err[0]
