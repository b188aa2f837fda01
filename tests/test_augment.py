"""Augmentation as AST does it: SpecAugment's masked value and mixup with a partner from the whole
split, against independent re-implementations of AST's order of operations and hand computations;
both backends serve the same."""

import numpy as np
import pytest
import torch

from c2fdata.compress import compress
from c2fdata.pipeline import PipelineConfig, make_loader
from c2fdata.pipeline.loader import mask_fill
from c2fdata.pipeline.mixup import draw_mixup, mix_features, mix_labels
from c2fdata.pipeline.sampling import Batch, SampleParams
from c2fdata.pipeline.torch_loader import transform
from c2fdata.reader import StoreReader
from test_pipeline import (MEAN, N_CLIPS, N_MELS, STD, TRAINING, assert_same_batches, clips, collect, config,
                           needs_dali, run_graph)
# test_pipeline's stores as fixtures of this module too (module scope: built once here)
from test_pipeline import multi_store, reader, store  # noqa: F401

ESC_MEAN, ESC_STD = -6.6268077, 5.358466


# -- SpecAugment ----------------------------------------------------------------------------------
def ast_order(stored: np.ndarray, method: str, factor: int, masks: tuple, mean: float, std: float) -> torch.Tensor:
    """AST's order, written independently of the loader: the (T, F) fbank -> (F, T) as
    torchaudio's FrequencyMasking/TimeMasking see it, a frequency band (rows) and a time band
    (columns) set to 0 on the un-normalised values, back to (T, F), then (x - mean) / (2 std),
    dividing as AST does. Compression first, as the loader does (masks live at the phase's rate)."""
    t0, tw, f0, fw = masks
    x = compress(torch.from_numpy(stored).float(), method, factor)  # (T/C, F)
    spec = x.transpose(0, 1).clone()  # (F, T/C)
    spec[f0:f0 + fw, :] = 0.0  # FrequencyMasking: mask_value 0
    spec[:, t0:t0 + tw] = 0.0  # TimeMasking
    return (spec.transpose(0, 1) - mean) / (std * 2)


@pytest.mark.parametrize("method, factor", [("none", 1), ("fshift", 2), ("pool-avg", 2), ("pool-max", 3)])
@pytest.mark.parametrize("mean, std", [(MEAN, STD), (ESC_MEAN, ESC_STD), (-3.1, 2.2)])
def test_masks_hold_what_ast_masking_before_normalising_leaves(method, factor, mean, std):
    frames = 24
    x = clips(frames, n=4)
    out_frames = frames // factor
    fixed = [(0, 3, 2, 5), (out_frames - 2, 2, 0, 1), (3, 0, N_MELS - 4, 4), (1, out_frames - 1, 6, 0)]
    params = SampleParams(np.zeros(4, np.int64), np.zeros(4, np.int64), *(np.array(v) for v in zip(*fixed)))
    cfg = PipelineConfig("unused", method=method, factor=factor, target_frames=frames, time_mask_frames=8,
                         freq_mask_bins=4)
    served = transform(Batch(x, [np.int64(0)] * 4, np.arange(4), params), cfg, mean, std)["features"]
    fill = mask_fill("ast", mean, std)
    for b, masks in enumerate(fixed):
        ref = ast_order(x[b], method, factor, masks, mean, std)
        torch.testing.assert_close(served[b], ref, rtol=2e-7, atol=2e-7)  # AST divides: an ulp apart
        t0, tw, f0, fw = masks
        assert (served[b, t0:t0 + tw] == fill).all() and (served[b, :, f0:f0 + fw] == fill).all()
    assert abs(mask_fill("ast", MEAN, STD) - 0.467) < 5e-4  # AudioSet's constants: +0.467


def test_mask_value_zero_keeps_the_old_behaviour_and_no_normalisation_masks_log_mel_0():
    x = clips(16, n=1)
    params = SampleParams(*(np.array([v]) for v in (0, 0, 2, 3, 4, 5)))
    batch = Batch(x, [np.int64(0)], np.arange(1), params)
    cfg = PipelineConfig("unused", target_frames=16, time_mask_frames=4, freq_mask_bins=6, mask_value="zero")
    zero = transform(batch, cfg, MEAN, STD)["features"][0]
    assert (zero[2:5] == 0).all() and (zero[:, 4:9] == 0).all()
    raw = transform(batch, cfg.replace(mask_value="ast"), None, None)["features"][0]  # normalize=False
    assert (raw[2:5] == 0).all() and (raw[:, 4:9] == 0).all()
    assert mask_fill("ast", None, None) == 0.0
    with pytest.raises(ValueError, match="mask_value must be one of"):
        cfg.replace(mask_value="mean")


def test_loader_masks_with_the_store_statistics(store, reader):
    cfg = config(store, backend="torch", freq_mask_bins=6, time_mask_frames=12, shuffle=True)
    loader = make_loader(cfg, reader)
    fill = mask_fill("ast", reader.mean, reader.std)
    assert fill == pytest.approx(-reader.mean / (2 * reader.std), rel=1e-6) and fill != 0
    batch = next(iter(loader))
    p = loader.source().read(0, 0).params
    for b in range(len(batch["index"])):
        band = batch["features"][b, :, p.freq_start[b]:p.freq_start[b] + p.freq_width[b]]
        assert (band == fill).all()


@needs_dali
def test_dali_mask_fills_with_the_given_value():
    from c2fdata.pipeline import dali
    from c2fdata.pipeline.torch_loader import mask

    x = [c.astype(np.float32) for c in clips(13, n=2)]
    params = [(3, 4, 2, 5), (0, 13, 0, 0)]
    anchors = [np.array([t0, 0, 0, f0], np.float32) for t0, _, f0, _ in params]
    shapes = [np.array([tw, N_MELS, 13, fw], np.float32) for _, tw, _, fw in params]
    fill = mask_fill("ast", MEAN, STD)
    (out,) = run_graph(lambda a, s, h: dali.mask(a, s, h, fill), x, anchors, shapes)
    for i, clip in enumerate(x):
        assert torch.equal(torch.from_numpy(out[i]), mask(torch.from_numpy(clip), *params[i], fill))


# -- mixup: the pure functions against hand computations ------------------------------------------
def test_mix_features_by_hand():
    a = np.log(np.array([[2.0, 8.0], [2.0, 8.0], [2.0, 8.0], [1.0, 1.0]], np.float32))  # 3 real frames
    # and its stored padding, log-mel 0
    b = np.log(np.array([[4.0, 1.0], [4.0, 1.0], [1.0, 1.0], [1.0, 1.0]], np.float32))
    b[2:] = 0  # the partner has 2 real frames
    lam = 0.25
    feat = mix_features(a.astype(np.float16), 3, b.astype(np.float16), 2, lam, "features")
    power = mix_features(a, 3, b, 2, lam, "power")
    a16, b16 = a.astype(np.float16).astype(np.float64), b.astype(np.float16).astype(np.float64)
    expected_feat = np.array([
        0.25 * a16[0] + 0.75 * b16[0],
        0.25 * a16[1] + 0.75 * b16[1],
        0.25 * a16[2] + 0.75 * 0.0,  # past the partner's end: its stored padding, log-mel 0
        [0.0, 0.0],  # past the clip's end: the clip's padding, unmixed
    ])
    np.testing.assert_allclose(feat, expected_feat, rtol=1e-6, atol=1e-6)
    expected_power = np.log(np.array([
        [0.25 * 2 + 0.75 * 4, 0.25 * 8 + 0.75 * 1],  # log(l e^a + (1 - l) e^b)
        [0.25 * 2 + 0.75 * 4, 0.25 * 8 + 0.75 * 1],
        [0.25 * 2, 0.25 * 8],  # the partner is silent past its end: no power of its own
        [1.0, 1.0],  # log-mel 0: the clip's padding
    ]))
    np.testing.assert_allclose(power, expected_power, rtol=1e-6, atol=1e-6)
    assert feat.dtype == power.dtype == np.float32
    # the partner longer than the clip: cut to the clip's length
    np.testing.assert_allclose(mix_features(b, 2, a, 3, 0.5, "power")[2:], 0.0)


def test_mix_labels_as_ast():
    np.testing.assert_allclose(mix_labels(np.int64(1), np.int64(3), 0.7, 4), [0, 0.7, 0, 0.3], rtol=1e-6)
    np.testing.assert_allclose(mix_labels(np.int64(2), np.int64(2), 0.7, 4), [0, 0, 1, 0], rtol=1e-6)
    multi_a, multi_b = np.array([1, 1, 0], np.float32), np.array([0, 1, 1], np.float32)
    np.testing.assert_allclose(mix_labels(multi_a, multi_b, 0.4, 3), [0.4, 1.0, 0.6], rtol=1e-6)


def test_mixup_draws_are_a_function_of_seed_epoch_and_position():
    pos = np.arange(200)
    m = draw_mixup(5, 2, pos, 1000, 0.5, 10.0)
    again = draw_mixup(5, 2, pos[50:60], 1000, 0.5, 10.0)  # any batching draws the same
    np.testing.assert_array_equal(m.partner[50:60], again.partner)
    np.testing.assert_array_equal(m.lam[50:60], again.lam)
    assert 0.35 < m.mixed.mean() < 0.65 and (m.lam[~m.mixed] == 1).all()
    drawn = m.lam[m.mixed]  # Beta(10, 10): mean 0.5, std 0.109
    assert abs(drawn.mean() - 0.5) < 0.04 and 0.08 < drawn.std() < 0.14
    assert m.partner.max() > 900 and m.partner.min() < 100  # the whole split, not a batch
    never = draw_mixup(5, 2, pos, 1000, 0.0, 10.0)
    assert not never.mixed.any()
    np.testing.assert_array_equal(never.partner, m.partner)  # prob changes no other draw
    assert not np.array_equal(draw_mixup(6, 2, pos, 1000, 0.5, 10.0).partner, m.partner)
    assert not np.array_equal(draw_mixup(5, 3, pos, 1000, 0.5, 10.0).partner, m.partner)


# -- mixup in the loader ------------------------------------------------------------------------
@pytest.mark.parametrize("domain", ["features", "power"])
def test_loader_mixes_with_partners_from_the_whole_split(store, reader, domain):
    """Every sample mixed (mixup = 1): what is served is, by hand, the stored clip mixed with its
    drawn partner, then normalised; labels l * y_a + (1 - l) * y_b."""
    cfg = config(store, backend="torch", shuffle=True, mixup=1.0, mixup_domain=domain, norm_mean=MEAN,
                 norm_std=STD, batch_size=5)
    loader = make_loader(cfg, reader)
    partners = set()
    for k, batch in enumerate(loader.epoch_batches(1)):
        positions, clips_ = loader.plan.batch(1, k)
        m = draw_mixup(cfg.seed, 1, positions, len(reader), 1.0, cfg.mixup_alpha)
        for b, clip in enumerate(clips_):
            fa, na, ya = reader[int(clip)]
            fb, nb, yb = reader[int(m.partner[b])]
            mixed = mix_features(fa, na, fb, nb, m.lam[b], domain)
            ref = (torch.from_numpy(mixed) - MEAN) / (2 * STD)
            torch.testing.assert_close(batch["features"][b], ref, rtol=2e-7, atol=2e-7)
            y = np.zeros(reader.n_classes)
            y[ya] += m.lam[b]
            y[yb] += 1 - m.lam[b]
            torch.testing.assert_close(batch["labels"][b], torch.from_numpy(y).float())
            partners.add(int(m.partner[b]))
        assert not set(m.partner.tolist()) <= set(clips_.tolist())  # partners come from outside the batch
    assert len(partners) > len(reader) // 2
    evaluation = make_loader(cfg.for_evaluation(), reader)
    assert evaluation.cfg.mixup == 0 and next(iter(evaluation))["labels"].dtype == torch.int64


def test_mixup_is_seeded_and_resumes_mid_epoch(store, reader):
    cfg = config(store, backend="torch", mixup=0.5, mixup_domain="power", **TRAINING)
    first = collect(make_loader(cfg, reader), 2)
    assert_same_batches(first, collect(make_loader(cfg, reader), 2))
    assert first[0][0]["labels"].dtype == torch.float32 and first[0][0]["labels"].shape[1] == reader.n_classes
    other = collect(make_loader(cfg.replace(seed=8), reader))
    assert not torch.equal(first[0][0]["features"], other[0][0]["features"])
    resumed = list(make_loader(cfg, reader).epoch_batches(0, start=2))
    assert_same_batches([first[0][2:]], [resumed])
    with make_loader(cfg.replace(num_workers=2), reader) as workers:
        assert_same_batches(first, collect(workers, 2))


@needs_dali
@pytest.mark.parametrize("settings", [
    dict(mask_value="ast", norm_mean=MEAN, norm_std=STD),
    dict(mask_value="zero"),
    dict(mixup=0.6, mixup_domain="features"),
    dict(mixup=0.6, mixup_domain="power", norm_mean=ESC_MEAN, norm_std=ESC_STD, method="pool-avg", factor=2),
    dict(mixup=1.0, mixup_domain="power", method="fshift", factor=3, target_frames=40),
], ids=["ast-constants", "zero", "mixup-features", "mixup-power-pool", "mixup-power-fshift"])
def test_backends_agree_on_masks_and_mixup(store, reader, settings):
    cfg = config(store, **{**TRAINING, **settings})
    torch_batches = collect(make_loader(cfg.replace(backend="torch"), reader), epochs=2)
    with make_loader(cfg.replace(backend="dali"), reader) as dali_loader:
        assert_same_batches(torch_batches, collect(dali_loader, epochs=2))


@needs_dali
def test_backends_agree_on_mixup_of_multi_label_clips(multi_store):
    reader = StoreReader(multi_store, "train")
    cfg = config(multi_store, batch_size=5, mixup=0.7, mixup_domain="power", **TRAINING)
    torch_batches = collect(make_loader(cfg.replace(backend="torch"), reader))
    with make_loader(cfg.replace(backend="dali"), reader) as dali_loader:
        assert_same_batches(torch_batches, collect(dali_loader))
    labels = torch.cat([b["labels"] for b in torch_batches[0]])
    assert ((labels > 0) & (labels < 1)).any()  # mixed targets


def test_bad_mixup_settings(store):
    with pytest.raises(ValueError, match="mixup is a probability"):
        config(store, mixup=1.5)
    with pytest.raises(ValueError, match="mixup_domain must be one of"):
        config(store, mixup=0.5, mixup_domain="waveform")
    with pytest.raises(ValueError, match="mixup_alpha must be > 0"):
        config(store, mixup=0.5, mixup_alpha=0)


def test_power_mixup_stays_finite_when_the_weight_rounds_to_zero():
    from c2fdata.pipeline.mixup import mix_features

    a, b = np.full((8, 4), -3.0, np.float32), np.full((8, 4), -5.0, np.float32)
    out = mix_features(a, 8, b, 4, 4.65e-53, "power")  # float32(4.65e-53) == 0
    assert np.isfinite(out).all()
    assert np.allclose(out[:4], -5.0)  # all partner where it is
