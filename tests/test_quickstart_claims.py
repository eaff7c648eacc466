"""What the quickstart claims (issue 15): it validates on photos the base never trained on, and its
report's first sentence says what the intervals show -- a loss as a loss."""

from __future__ import annotations

from instructsd.data.samples import GROUPS, sample_images
from instructsd.models.loading import tiny_base_record
from instructsd.recipes.quickstart import SCRATCH_LABEL, TASK, TUNED_LABEL, lead_sentence, unseen_photos


def _row(method: str, psnr: float, half: float = 0.5) -> dict:
    return {"task": TASK, "method": method, "n": 40, "n_groups": 4, "psnr": psnr, "psnr_lo": psnr - half,
            "psnr_hi": psnr + half}


def test_validation_photos_are_exactly_those_the_base_never_trained_on() -> None:
    record = tiny_base_record()
    held = unseen_photos(record)
    names = {n for n, _ in sample_images()}
    trained = {GROUPS.get(n, n) for n in names} - set(held)
    assert len(held) >= 4  # issue 15: intervals over at least four distinct photos
    assert not {GROUPS.get(n, n) for n in record["validation_photos"]} & trained
    # a photo the base saw in training is never a quickstart validation photo
    base_names = {n for n, _ in sample_images(record["config"].get("photos", "skimage-15"))}
    assert not {GROUPS.get(n, n) for n in base_names - set(record["validation_photos"])} & set(held)


def test_the_lead_sentence_says_win_overlap_and_loss_plainly() -> None:
    win = lead_sentence([_row(TUNED_LABEL, 24.0), _row("identity", 18.0), _row(SCRATCH_LABEL, 20.0)], 400)
    assert win.startswith("On 4 held-out photos") and "beats doing nothing by 6.0 dB (95% intervals apart)" in win
    assert "beats a 4-channel start trained the same way by 4.0 dB" in win
    close = lead_sentence([_row(TUNED_LABEL, 18.5), _row("identity", 18.0), _row(SCRATCH_LABEL, 20.0)], 400)
    assert "0.5 dB above doing nothing, but the 95% intervals overlap" in close
    assert "loses to a 4-channel start trained the same way by 1.5 dB" in close
