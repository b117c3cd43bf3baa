import json
import math
import sys

import pytest
import torch

from pipeline.errors import UserError
from pipeline.train import (TrainConfig, Trainer, can_continue, load_checkpoint, load_model, resolve_device,
                            save_model, train)


def _images(n=12, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth blobs are learnable in a few epochs, unlike white noise
    base = torch.rand(n, 3, 4, 4, generator=g)
    return (torch.nn.functional.interpolate(base, size=size, mode="bilinear") * 255).to(torch.uint8)


def _cfg(**kw):
    return TrainConfig(**{"latent_dim": 4, "epochs": 2, "batch_size": 4, "lr": 1e-3, "seed": 0, "device": "cpu",
                          "image_size": 32, **kw})


def test_same_seed_same_losses_on_cpu():
    _, h1 = train(_images(), _cfg(), progress=False)
    _, h2 = train(_images(), _cfg(), progress=False)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(h1) == strip(h2)
    _, h3 = train(_images(), _cfg(seed=1), progress=False)
    assert h3[-1]["loss"] != h1[-1]["loss"]


def test_trainer_matches_the_plain_seed_loop_within_float_tolerance(device):
    """channels_last, the uint8 data on the device and the fused Adam change the speed, not the numbers:
    the same model, data order and noise in a plain loop (NCHW, float images, torch.optim.Adam as the
    lecture uses it) give the same losses and weights within float tolerance. On CUDA in fp32 with TF32
    off, so that both loops do full-precision arithmetic."""
    from contextlib import ExitStack

    from pipeline.losses import vae_loss
    from pipeline.model import ConvVAE

    images, cfg = _images(n=12), _cfg(epochs=3, device=device, precision="fp32")
    with ExitStack() as stack:
        if device == "cuda":
            stack.enter_context(torch.backends.cudnn.flags(enabled=True, allow_tf32=False))
            old, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False
            stack.callback(setattr, torch.backends.cuda.matmul, "allow_tf32", old)
        trainer = Trainer(images, cfg)
        assert trainer.opt.defaults["fused"] and trainer.model.encoder[0].weight.is_contiguous(
            memory_format=torch.channels_last)
        assert trainer.data.device.type == device and trainer.data.dtype == torch.uint8
        history = trainer.fit(progress=False)

        torch.manual_seed(cfg.seed)
        model = ConvVAE(cfg.latent_dim, cfg.image_size).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        shuffle = torch.Generator(device=device).manual_seed(cfg.seed)
        noise = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        data = images.to(device).float() / 255
        plain = []
        for _ in range(cfg.epochs):
            total = 0.0
            for idx in torch.randperm(len(data), generator=shuffle, device=device).split(cfg.batch_size):
                eps = torch.randn((len(idx), cfg.latent_dim), generator=noise, device=device)
                x = data[idx]
                recon, mu, logvar = model(x, eps=eps)
                loss = vae_loss(recon, x, mu, logvar)["loss"]
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            plain.append(total / len(data))
    assert [r["loss"] for r in history] == pytest.approx(plain, rel=1e-4)
    # Adam's normalised steps magnify rounding in near-zero gradients; 9 steps of lr 1e-3 could move a
    # weight by 9e-3, and independent inits differ by ~3e-2: here they stay within 1e-3 (measured 2e-4)
    for (name, a), b in zip(trainer.model.state_dict().items(), model.state_dict().values()):
        assert (a - b).abs().max().item() < 1e-3, name


def test_history_rows_and_callback():
    seen = []
    _, history = train(_images(), _cfg(epochs=3), on_epoch=lambda e, r: seen.append(e), progress=False)
    assert seen == [1, 2, 3]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    for r in history:
        assert r["neg_elbo"] == pytest.approx(r["recon"] + r["kl"])
        assert r["loss"] == pytest.approx(r["recon"] + r["kl"], rel=1e-5)  # elbo with beta 1


def test_loss_goes_down(device):
    _, history = train(_images(n=16), _cfg(epochs=15, lr=3e-3, device=device), progress=False)
    assert history[-1]["recon"] < 0.95 * history[0]["recon"]


def test_seed_mean_variant_trains_and_reports_comparable_terms():
    _, history = train(_images(), _cfg(kl="seed_mean", beta=1.0), progress=False)
    r = history[-1]
    # the notebook's objective divides the KL by batch * latent dims: loss per image < recon + kl
    assert r["loss"] < r["recon"] + r["kl"] or r["kl"] == pytest.approx(0, abs=1e-3)
    assert r["neg_elbo"] == pytest.approx(r["recon"] + r["kl"])


def test_save_and_load_round_trip(tmp_path):
    model, _ = train(_images(), _cfg(), progress=False)
    save_model(model, _cfg(), tmp_path)
    again = load_model(tmp_path)
    x = torch.rand(2, 3, 32, 32)
    # the trained model is channels_last, the loaded one contiguous: same weights, other conv kernels
    torch.testing.assert_close(model.reconstruct(x), again.reconstruct(x), rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "config.json").read_text())["latent_dim"] == 4


def test_missing_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="run the train stage first"):
        load_model(tmp_path)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="train.device = cuda"):
            resolve_device("cuda")


def _strip(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_two_plus_two_epochs_equal_four_straight(tmp_path, device):
    """Exactly on CPU; on CUDA within rounding (cuDNN may pick kernels that sum in another order)."""
    ckpt = tmp_path / "checkpoint.pt"
    first = Trainer(_images(), _cfg(epochs=2, device=device))
    first.fit(progress=False, checkpoint=ckpt)
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 2 and state["finished"]
    longer = _cfg(epochs=4, device=device)
    assert can_continue(state, longer, resume=True)
    second = Trainer(_images(), longer)
    second.load_state_dict(state)
    history = second.fit(progress=False)
    straight = Trainer(_images(), _cfg(epochs=4, device=device))
    expected = straight.fit(progress=False)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    if device == "cpu":
        assert _strip(history) == _strip(expected)
        for k, v in straight.model.state_dict().items():
            assert torch.equal(v, second.model.state_dict()[k]), k
    else:
        assert [r["loss"] for r in history] == pytest.approx([r["loss"] for r in expected], rel=1e-3)


def test_when_a_checkpoint_may_be_continued(tmp_path):
    ckpt = tmp_path / "c.pt"
    Trainer(_images(), _cfg(epochs=2)).fit(progress=False, checkpoint=ckpt)
    state = load_checkpoint(ckpt)
    assert not can_continue(state, _cfg(epochs=4), resume=False)  # finished: extend only when asked
    assert can_continue(state, _cfg(epochs=4), resume=True)
    assert can_continue(state, _cfg(epochs=2), resume=True)
    assert not can_continue(state, _cfg(epochs=1), resume=True)  # fewer epochs: retrain
    assert not can_continue(state, _cfg(epochs=4, lr=2e-3), resume=True)  # other params: retrain
    assert not can_continue(state, _cfg(epochs=4, latent_dim=5), resume=True)
    unfinished = dict(state, finished=False)
    assert can_continue(unfinished, _cfg(epochs=2), resume=False)  # a crash resumes by itself
    assert not can_continue(None, _cfg(), resume=True)


def test_a_damaged_checkpoint_is_never_loaded(tmp_path):
    ckpt = tmp_path / "c.pt"
    Trainer(_images(), _cfg(epochs=1)).fit(progress=False, checkpoint=ckpt)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    assert load_checkpoint(ckpt) is None
    assert load_checkpoint(tmp_path / "none.pt") is None


def test_checkpoint_every_and_stop_request(tmp_path):
    class Stop:
        requested = False

    stop = Stop()
    ckpt = tmp_path / "c.pt"
    trainer = Trainer(_images(), _cfg(epochs=10))
    seen = []

    def on_epoch(epoch, row):
        seen.append(epoch)
        if epoch == 3:
            stop.requested = True

    trainer.fit(progress=False, checkpoint=ckpt, checkpoint_every=2, stop=stop, on_epoch=on_epoch)
    assert seen == [1, 2, 3]
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 3 and not state["finished"]


def test_kl_warmup_ramps_beta():
    trainer = Trainer(_images(), _cfg(epochs=3, kl_warmup_epochs=4, beta=2.0))
    history = trainer.fit(progress=False)
    assert [r["beta"] for r in history] == pytest.approx([0.5, 1.0, 1.5])
    assert Trainer(_images(), _cfg()).beta_at(1) == 1.0


@pytest.mark.parametrize("recon", ["mse", "bce", "gaussian"])
@pytest.mark.parametrize("kl", ["elbo", "seed_mean"])
def test_every_loss_option_trains_and_reports_its_own_terms(recon, kl, device):
    """Each option's reconstruction term against what it must equal or differ from: mse is the summed squared
    error itself; bce is a cross-entropy (above the 0 of a perfect match for images that are not all 0 or
    1); gaussian is a log-likelihood that is not the squared error. seed_mean's loss puts the KL at 1/(batch
    x latent) of its per-image value; elbo's at full weight."""
    history = Trainer(_images(), _cfg(recon=recon, kl=kl, device=device)).fit(progress=False)
    for r in history:
        assert all(math.isfinite(r[k]) for k in ("loss", "recon", "kl", "sse", "neg_elbo"))
        if recon == "mse":
            assert r["recon"] == pytest.approx(r["sse"], rel=1e-6)
        elif recon == "bce":
            assert r["recon"] > 0 and r["recon"] != pytest.approx(r["sse"], rel=0.01)
        else:
            assert abs(r["recon"] - r["sse"]) > 1.0
        assert r["kl"] > 0
    # the weight of the KL term in the optimised loss, read off the first epoch (beta 1, batches of 4 of 12)
    r = history[0]
    if kl == "elbo":
        assert r["loss"] == pytest.approx(r["recon"] + r["kl"], rel=1e-5)
    else:  # the notebook's batch loss (recon summed, KL a mean over 4 images x 4 latent dims), per image
        assert r["loss"] == pytest.approx(r["recon"] + r["kl"] / (4 * 4), rel=1e-5)


def test_bf16_autocast_really_runs_and_agrees_with_fp32_to_bf16s_precision(device):
    """From the same weights with a learning rate too small to move them, an epoch's losses are the initial
    model's: bf16 must differ from fp32 (it really computes in bf16, 8 mantissa bits) and agree with it to
    about bf16's relative precision (2^-8 per value, a few times that through the layers)."""
    fp32 = Trainer(_images(), _cfg(precision="fp32", lr=1e-9, device=device))
    bf16 = Trainer(_images(), _cfg(precision="bf16", lr=1e-9, device=device))
    assert (fp32.amp_dtype, bf16.amp_dtype) == (None, torch.bfloat16)
    a, b = fp32.fit(progress=False)[0], bf16.fit(progress=False)[0]
    for key in ("sse", "kl"):
        assert a[key] != b[key]
        assert b[key] == pytest.approx(a[key], rel=0.03)
    auto = Trainer(_images(), _cfg(precision="auto", device=device))
    assert auto.amp_dtype == (torch.bfloat16 if device == "cuda" else None)  # bf16 autocast on CUDA only


@pytest.mark.parametrize("recon", ["mse", "bce", "gaussian"])
def test_divergence_stops_training_with_one_clear_error(tmp_path, recon, device):
    """lr 1.0 blows the weights up to NaN in the first epoch: training stops there with a UserError that
    names the epoch and the fix (for bce too, whose F.binary_cross_entropy would refuse NaN input with a
    range error), and no NaN epoch reaches the history, the callback or the checkpoint."""
    ckpt = tmp_path / "c.pt"
    trainer = Trainer(_images(), _cfg(epochs=3, lr=1.0, recon=recon, device=device))
    seen = []
    with pytest.raises(UserError, match=r"training diverged in epoch 1: the loss became nan .*lower train.lr \(now 1.0\)"):
        trainer.fit(progress=False, checkpoint=ckpt, checkpoint_every=1, on_epoch=lambda e, r: seen.append(e))
    assert trainer.epoch == 0 and trainer.history == [] and seen == [] and not ckpt.exists()


def test_out_of_memory_becomes_one_line_naming_the_fix():
    from pipeline.train import is_out_of_memory, out_of_memory_as_user_error

    cfg = _cfg(batch_size=256, image_size=128)
    cpu_oom = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 40000000000000 bytes. Error code 12")
    for exc in (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), cpu_oom):
        assert is_out_of_memory(exc)
        with pytest.raises(UserError) as info:
            with out_of_memory_as_user_error(torch.device("cuda"), cfg):
                raise exc
        assert str(info.value) == ("out of memory on cuda training 128x128 images in batches of 256: "
                                   "lower train.batch_size (e.g. 128) or preprocess.size")
    other = RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    assert not is_out_of_memory(other)
    with pytest.raises(RuntimeError, match="shapes"):
        with out_of_memory_as_user_error(torch.device("cpu"), cfg):
            raise other


def test_cosine_schedule_warms_up_then_decays_and_constant_stays():
    from pipeline.train import lr_at

    cfg = _cfg(lr=1e-3, schedule="cosine")
    total = 1000  # warm-up: 5 % = 50 steps
    assert lr_at(cfg, 0, total) == pytest.approx(4e-5)
    assert lr_at(cfg, 25, total) == pytest.approx(1e-3 * (0.04 + 0.96 * 0.5))
    assert lr_at(cfg, 50, total) == pytest.approx(1e-3)
    assert lr_at(cfg, 50 + 475, total) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))  # half-way down the cosine
    assert lr_at(cfg, total, total) == pytest.approx(1e-5)
    lrs = [lr_at(cfg, s, total) for s in range(50, total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert all(lr_at(_cfg(lr=2e-3, schedule="constant"), s, total) == 2e-3 for s in (0, 500, 999))


def test_the_trainer_follows_the_schedule_and_logs_the_lr():
    trainer = Trainer(_images(n=12), _cfg(epochs=4, schedule="cosine", optimizer="adamw", weight_decay=0.01))
    assert isinstance(trainer.opt, torch.optim.AdamW) and trainer.opt.defaults["weight_decay"] == 0.01
    history = trainer.fit(progress=False)
    from pipeline.train import lr_at

    # 3 steps an epoch, 12 in all: each epoch's row holds the lr of its last step
    assert [r["lr"] for r in history] == pytest.approx([lr_at(trainer.cfg, 3 * e + 2, 12) for e in range(4)])
    assert history[0]["lr"] > history[-1]["lr"]


def test_augment_is_seeded_keeps_shape_and_range_and_changes_images():
    from pipeline.train import augment

    x = _images(n=8).float() / 255
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    c = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    assert (a - x).abs().mean() > 0.01  # the images really change...
    assert (a.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))).abs().max() < 0.15  # ...but stay the same pictures


def test_augmented_training_is_deterministic_and_resumes_exactly(tmp_path):
    cfg = _cfg(epochs=4, augment=True, schedule="cosine", arch="bn")
    straight = Trainer(_images(), cfg).fit(progress=False)
    first = Trainer(_images(), cfg)
    first.fit(epochs=2, progress=False)
    first.save_checkpoint(tmp_path / "c.pt")
    second = Trainer(_images(), cfg)
    second.load_state_dict(load_checkpoint(tmp_path / "c.pt"))
    resumed = second.fit(progress=False)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(resumed) == strip(straight)


def test_a_cosine_run_is_not_extended_to_more_epochs():
    """Under a schedule that depends on the total, 100 + 50 epochs is not 150 epochs: train afresh."""
    done = {"config": json.dumps(_cfg(epochs=2, schedule="cosine").__dict__), "epoch": 2, "finished": True}
    from pipeline.train import code_fingerprint

    done["code"] = code_fingerprint()
    assert not can_continue(done, _cfg(epochs=4, schedule="cosine"), resume=True)
    done_const = {**done, "config": json.dumps(_cfg(epochs=2).__dict__)}
    assert can_continue(done_const, _cfg(epochs=4), resume=True)


def test_augment_auto_is_on_for_a_homework_sized_set_only():
    from pipeline.train import AUTO_AUGMENT_BELOW

    assert Trainer(_images(n=12), _cfg(augment="auto")).augment
    assert not Trainer(_images(n=AUTO_AUGMENT_BELOW), _cfg(augment="auto")).augment
    assert Trainer(_images(n=AUTO_AUGMENT_BELOW), _cfg(augment=True)).augment
    assert not Trainer(_images(n=12), _cfg(augment=False)).augment


def test_progress_in_a_log_is_a_line_per_tenth_of_the_run(capsys):
    """Not a terminal (a log file, a DVC queue log): ten lines for 80 epochs, the last one included; a
    short resumed run still ends on its last epoch."""
    from pipeline.train import Progress

    p = Progress(80)
    for e in range(1, 81):
        p.update({"epoch": e, "loss": 100.0 - e, "recon": 90.0, "kl": 10.0})
    p.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[2] for line in lines] == [f"{e}/80" for e in range(8, 81, 8)]
    assert lines[-1].startswith("train: epoch 80/80  loss 20.0  recon 90.0  kl 10.0")
    p = Progress(7, initial=5)
    for e in (6, 7):
        p.update({"epoch": e, "loss": 1.0, "recon": 1.0, "kl": 0.0})
    assert [line.split()[2] for line in capsys.readouterr().err.splitlines()] == ["6/7", "7/7"]


def test_a_first_ctrl_c_asks_to_stop_a_second_aborts_and_the_handlers_come_back():
    import os
    import signal

    from pipeline.train import GracefulStop

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signum == signal.SIGINT  # training finishes its epoch, then stops
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)  # a second signal, of either kind: at once
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_stop_requested_mid_training_ends_at_the_epoch_boundary_with_a_checkpoint(tmp_path):
    from pipeline.train import GracefulStop

    trainer = Trainer(_images(), _cfg(epochs=5))
    with GracefulStop() as stop:
        def ask_after_two(epoch, row):
            if epoch == 2:
                stop.signum = 2  # as the handler records a SIGINT
        trainer.fit(progress=False, on_epoch=ask_after_two, checkpoint=tmp_path / "c.pt", stop=stop)
    assert trainer.epoch == 2 and len(trainer.history) == 2
    state = load_checkpoint(tmp_path / "c.pt")
    assert state["epoch"] == 2 and not state["finished"]
