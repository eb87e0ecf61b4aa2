"""Pretrained weights through a real Hub client: olah and a stdlib Hub double on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import torch
import torchvision
from hubservers import FakeHub, Olah, publish
from safetensors.torch import save, save_file
from torchvision.models.feature_extraction import create_feature_extractor

import zoo
from zoo import hub
from zoo.io import file_identity, folder_config, save_model_folder
from zoo.registry import _weights, get_weights, register_weights
from zoo.weights import Weights


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty Hub cache and zoo cache; online unless a test says otherwise."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "zoo"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "hf" / "hub"


class _NoSleep:
    """huggingface_hub backs off for ~25 s before giving up on a failing server; tests need not wait."""

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        pass


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.file_download
    import huggingface_hub.utils._http

    monkeypatch.setattr(huggingface_hub.utils._http, "time", _NoSleep())
    monkeypatch.setattr(huggingface_hub.file_download, "time", _NoSleep())


def cache_files(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() and ".locks" not in p.parts)


# --- the happy path through olah, a real Hub-compatible server --------------------------------------


@pytest.fixture(scope="module")
def olah_resnet50(tmp_path_factory: pytest.TempPathFactory):
    """olah serving a torchvision resnet50 (random init) as timm/resnet50.tv_in1k."""
    workdir = tmp_path_factory.mktemp("olah")
    torch.manual_seed(0)
    reference = torchvision.models.resnet50().eval()
    for m in reference.modules():  # non-trivial statistics, so a wrong load would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    config = {"architecture": "resnet50", "num_classes": 1000, "pretrained_cfg": {"tag": "tv_in1k"}}
    weights = save({k: v.contiguous() for k, v in reference.state_dict().items()}, metadata={"format": "pt"})
    publish(
        workdir / "mirrors",
        "timm/resnet50.tv_in1k",
        {"model.safetensors": weights, "config.json": json.dumps(config).encode()},
    )
    server = Olah(workdir, "timm/resnet50.tv_in1k").start()
    yield server, reference
    server.stop()


def test_pretrained_from_olah_then_offline_from_the_cache(olah_resnet50, hf_home: Path, monkeypatch) -> None:
    server, reference = olah_resnet50
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        model = zoo.create_model("resnet50.tv_in1k", pretrained=True).eval()
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)
    assert model.pretrained_cfg["weights"] == "resnet50.tv_in1k" and model.pretrained_cfg["tag"] == "tv_in1k"
    assert model.pretrained_cfg["crop_pct"] == 0.875
    assert len(model.pretrained_cfg["label_names"]) == 1000
    assert any("models--timm--resnet50.tv_in1k" in f for f in cache_files(hf_home))

    server.stop()  # the network is gone: the cache alone must do, with no request at all
    try:
        for offline in ("", "1"):
            monkeypatch.setenv("HF_HUB_OFFLINE", offline)
            started = time.perf_counter()
            with torch.no_grad():
                again = zoo.create_model("resnet50.tv_in1k", pretrained=True).eval()
                torch.testing.assert_close(again(x), expected, atol=1e-5, rtol=0)
            assert time.perf_counter() - started < 10  # a request to a dead server would back off for ~25 s
    finally:
        server.start()


def test_hf_hub_name_and_features_only(olah_resnet50, hf_home: Path, monkeypatch) -> None:
    server, reference = olah_resnet50
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    model = zoo.create_model("hf-hub:timm/resnet50.tv_in1k", pretrained=True, features_only=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model(x)
        expected = create_feature_extractor(reference, ["layer4"])(x)["layer4"]
        torch.testing.assert_close(feats[-1], expected, atol=1e-5, rtol=0)
    assert "fc.weight" not in model.state_dict()


# --- error paths through the stdlib double -----------------------------------------------------------


def tiny_weights(num_classes: int = 10) -> tuple[bytes, dict[str, torch.Tensor]]:
    model = zoo.create_model("resnet20", num_classes=num_classes)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    return save(state, metadata={"format": "pt"}), state


@pytest.fixture
def fake_hub(hf_home: Path, monkeypatch: pytest.MonkeyPatch):
    """The double serving resnet20 weights as testorg/resnet20, registered as tag resnet20.hubtest."""
    data, state = tiny_weights()
    register_weights("resnet20", "hubtest", Weights("testorg/resnet20", num_classes=10, label_names="cifar-10"))
    with FakeHub({"testorg/resnet20": {"model.safetensors": data}}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        server.data, server.state = data, state  # type: ignore[attr-defined]
        try:
            yield server
        finally:
            _weights["resnet20"].pop("hubtest")


def load_from(hub_id: str = "testorg/resnet20", **overlay: object) -> torch.nn.Module:
    return zoo.create_model(
        "resnet20.hubtest", pretrained=True, pretrained_cfg_overlay={"hf_hub_id": hub_id, **overlay}
    )


def downloads_of(fake_hub: FakeHub) -> tuple[torch.nn.Module, int]:
    """``load_from()``, and how many times it downloaded the weights (GET requests)."""
    gets = lambda: sum(m == "GET" for m, _ in fake_hub.requests)
    before = gets()
    return load_from(), gets() - before


def test_download_verify_and_warm_load_makes_no_request(fake_hub: FakeHub, hf_home: Path) -> None:
    import hashlib

    sha = hashlib.sha256(fake_hub.data).hexdigest()  # type: ignore[attr-defined]
    model = load_from(sha256=sha)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, fake_hub.state[k], msg=k)  # type: ignore[attr-defined]
    seen = len(fake_hub.requests)
    load_from(sha256=sha)
    assert len(fake_hub.requests) == seen  # from the cache, no HEAD, no GET


def test_cdn_redirect(fake_hub: FakeHub) -> None:
    fake_hub.faults["model.safetensors"] = "cdn"
    load_from()
    assert any(path.startswith("/cdn/") for _, path in fake_hub.requests)


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        (dict(hub_id="testorg/missing"), r"RepositoryNotFoundError"),
        (dict(filename="nope.safetensors"), r"EntryNotFoundError"),
        (dict(revision="0" * 40), r"RevisionNotFoundError"),
    ],
)
def test_missing_things_are_named_with_every_place_tried(fake_hub: FakeHub, hf_home: Path, overlay, message) -> None:
    hub_id = overlay.pop("hub_id", "testorg/resnet20")
    with pytest.raises(zoo.WeightsNotFoundError, match=message) as info:
        load_from(hub_id, **overlay)
    text = str(info.value)
    assert "Looked in:" in text and "Hub cache" in text and fake_hub.url in text
    assert "zoo download resnet20.hubtest" in text
    assert not [f for f in cache_files(hf_home) if "blobs" in f]


@pytest.mark.parametrize(("fault", "status"), [("unauthorized", 401), ("forbidden", 403)])
def test_a_refused_token_is_named_not_taken_for_a_damaged_file_or_a_silent_hub(
    fake_hub: FakeHub, hf_home: Path, fault: str, status: int
) -> None:
    fake_hub.faults["model.safetensors"] = fault  # a 403 on the HEAD: huggingface_hub wraps it as a cache miss
    with pytest.raises(zoo.WeightsNotFoundError, match=rf"access refused \(HTTP {status}\): check HF_TOKEN") as info:
        load_from()
    assert not isinstance(info.value.__cause__, hub.HubUnreachable)


def test_server_error_without_cache(fake_hub: FakeHub, hf_home: Path, no_backoff: None) -> None:
    fake_hub.faults["model.safetensors"] = "server_error"
    with pytest.raises(zoo.WeightsNotFoundError, match="unreachable"):
        load_from()
    assert not [f for f in cache_files(hf_home) if "blobs" in f]


def test_an_unreachable_hub_is_not_asked_for_the_pickle_fallback_too(
    hf_home: Path, monkeypatch: pytest.MonkeyPatch, no_backoff: None
) -> None:
    config = json.dumps({"architecture": "resnet20", "num_classes": 10, "pretrained_cfg": {}}).encode()
    with FakeHub({"testorg/down": {"config.json": config, "model.safetensors": tiny_weights(10)[0]}}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        server.faults["model.safetensors"] = "server_error"  # answers config.json, fails at the weights
        with pytest.raises(zoo.WeightsNotFoundError, match="unreachable"):
            zoo.create_model("hf-hub:testorg/down", pretrained=True)
        assert not [path for _, path in server.requests if path.endswith("pytorch_model.bin")], server.requests


def test_truncated_download_leaves_no_partial_file(fake_hub: FakeHub, hf_home: Path, no_backoff: None) -> None:
    fake_hub.faults["model.safetensors"] = "truncate"
    with pytest.raises(zoo.WeightsIntegrityError, match="download failed"):
        load_from()
    assert not [f for f in cache_files(hf_home) if "blobs" in f or f.endswith(".incomplete")]


def test_corrupted_download_fails_its_hash_and_is_removed(fake_hub: FakeHub, hf_home: Path) -> None:
    import hashlib

    fake_hub.faults["model.safetensors"] = "corrupt"
    sha = hashlib.sha256(fake_hub.data).hexdigest()  # type: ignore[attr-defined]
    with pytest.raises(zoo.WeightsIntegrityError, match=f"sha256 .* expected {sha}"):
        load_from(sha256=sha)
    assert not [f for f in cache_files(hf_home) if "blobs" in f or "snapshots" in f]


def test_damaged_cache_is_fetched_again(fake_hub: FakeHub, hf_home: Path, caplog) -> None:
    load_from()
    (blob,) = [p for p in hf_home.rglob("*") if p.parent.name == "blobs"]
    blob.write_bytes(blob.read_bytes()[:1000])  # truncated on disk
    with caplog.at_level(logging.WARNING):
        model, downloads = downloads_of(fake_hub)
    assert "damaged" in caplog.text and downloads == 1
    torch.testing.assert_close(model.fc.weight, fake_hub.state["fc.weight"])  # type: ignore[attr-defined]


def test_an_entry_another_process_evicts_meanwhile_is_fetched_again(
    fake_hub: FakeHub, hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_from()
    found = hub.cached_file

    def found_then_evicted(*args, **kwargs):  # between this process's lookup and its check
        path = found(*args, **kwargs)
        if path is not None:
            hub._evict(path, file_identity(path))
        return path

    monkeypatch.setattr(hub, "cached_file", found_then_evicted)
    model, downloads = downloads_of(fake_hub)
    assert downloads == 1
    torch.testing.assert_close(model.fc.weight, fake_hub.state["fc.weight"])  # type: ignore[attr-defined]


def test_a_good_copy_another_process_put_there_is_not_evicted_for_the_damaged_one_hashed_before(
    fake_hub: FakeHub, hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_from()
    (blob,) = [p for p in hf_home.rglob("*") if p.parent.name == "blobs"]
    good = blob.read_bytes()
    blob.write_bytes(good[:-9] + bytes([good[-9] ^ 0xFF]) + good[-8:])  # damaged on disk
    hashed = zoo.io.sha256_of

    def hashed_while_another_process_replaces_it(path):  # it evicted the damaged file and downloaded a good one
        with open(path, "rb"):  # still being read meanwhile
            digest = hashed(path)
            blob.unlink()
            blob.write_bytes(good)
        return digest

    monkeypatch.setattr(zoo.io, "sha256_of", hashed_while_another_process_replaces_it)
    _, downloads = downloads_of(fake_hub)
    monkeypatch.undo()
    assert blob.read_bytes() == good and downloads == 0  # kept, and found by huggingface_hub: no second download


def test_a_damaged_file_in_a_read_only_cache_is_named_not_fetched_again(
    fake_hub: FakeHub, hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    load_from()
    (blob,) = [p for p in hf_home.rglob("*") if p.parent.name == "blobs"]
    blob.write_bytes(blob.read_bytes()[:1000])
    unlink = Path.unlink

    def read_only(self: Path, missing_ok: bool = False) -> None:  # a shared cluster cache, mounted read-only
        if self.is_relative_to(hf_home):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)
    seen = len(fake_hub.requests)
    with pytest.raises(zoo.WeightsIntegrityError, match=rf"damaged and could not be removed .* Delete {blob}, or set "
                       "HF_HUB_CACHE to a cache the zoo can write"):  # fmt: skip
        load_from()
    assert len(fake_hub.requests) == seen  # a download would have handed back the same file


def test_huggingface_hub_switched_offline_in_code_is_obeyed_and_left_so(
    fake_hub: FakeHub, hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what a program may do for every library it uses
    with pytest.raises(zoo.WeightsNotFoundError, match="not asked, HF_HUB_OFFLINE is set"):
        load_from()
    assert fake_hub.requests == [] and constants.HF_HUB_OFFLINE is True


@pytest.mark.parametrize(
    ("overlay", "message"),
    [({"hf_hub_id": "testorg/resnet 20"}, r"repo_id: 'testorg/resnet 20' is not a Hub repo id"),
     ({"filename": "../model.safetensors"}, r"filename: '../model.safetensors' is not a file name in a Hub repo")],
)  # fmt: skip
def test_a_bad_repo_id_or_file_name_is_refused_before_the_cache_is_looked_at(
    fake_hub: FakeHub, overlay: dict, message: str
) -> None:
    with pytest.raises(zoo.ConfigError, match=message):
        zoo.create_model("resnet20.hubtest", pretrained=True, pretrained_cfg_overlay=overlay)
    assert fake_hub.requests == []


def test_an_unpinned_file_is_checked_against_the_hash_the_cache_names_it_by(
    fake_hub: FakeHub, hf_home: Path, caplog
) -> None:
    import hashlib

    load_from()  # no sha256 pinned, as for every ImageNet tag
    (blob,) = [p for p in hf_home.rglob("*") if p.parent.name == "blobs"]
    assert blob.name == hashlib.sha256(fake_hub.data).hexdigest()  # type: ignore[attr-defined]
    data = bytearray(blob.read_bytes())
    data[-9] ^= 0xFF  # a flipped bit in a tensor: header and size still fine
    blob.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        model, downloads = downloads_of(fake_hub)
    assert f"sha256 {hashlib.sha256(data).hexdigest()}, expected {blob.name}" in caplog.text
    assert downloads == 1  # evicted, fetched again
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, fake_hub.state[k], msg=k)  # type: ignore[attr-defined]


def test_evicting_a_damaged_entry_leaves_a_store_other_repos_share_alone(tmp_path: Path) -> None:
    import os

    store = tmp_path / "xet" / "chunk"  # huggingface_hub's shared store, which blobs of other repos link to
    store.parent.mkdir()
    store.write_bytes(b"shared")
    blob = tmp_path / "models--org--x" / "blobs" / ("e" * 64)
    blob.parent.mkdir(parents=True)
    blob.symlink_to(store)
    link = tmp_path / "models--org--x" / "snapshots" / ("c" * 40) / "model.safetensors"
    link.parent.mkdir(parents=True)
    link.symlink_to(Path("../../blobs") / blob.name)
    hub._evict(link, file_identity(link))
    assert not os.path.lexists(link) and not os.path.lexists(blob) and store.read_bytes() == b"shared"


def test_an_hf_hub_model_takes_its_weights_from_its_configs_commit(hf_home: Path, monkeypatch) -> None:
    """config.json cached at one commit, then main moved on: the weights must still be that commit's."""
    old, old_state = tiny_weights(10)
    new, _ = tiny_weights(7)

    def config(classes: int) -> bytes:
        return json.dumps({"architecture": "resnet20", "num_classes": classes, "pretrained_cfg": {}}).encode()

    with FakeHub({"testorg/moving": {"config.json": config(10), "model.safetensors": old}}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        first = server.commit
        zoo.create_model("hf-hub:testorg/moving")  # reads (and caches) config.json only
        server.publish("testorg/moving", {"config.json": config(7), "model.safetensors": new})
        model = zoo.create_model("hf-hub:testorg/moving", pretrained=True)
        assert ("GET", f"/testorg/moving/resolve/{first}/model.safetensors") in server.requests
    assert model.num_classes == 10  # with main's weights it would be 7, under a 10-class config
    torch.testing.assert_close(model.fc.weight, old_state["fc.weight"])


def test_cache_folders_and_offline_mode_are_read_as_huggingface_hub_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HOME", "~/hf")  # unexpanded, as docker ENV or a .env file leaves it
    assert hub.hub_cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", "$HOME/old-name")
    assert hub.hub_cache_dir() == tmp_path / "old-name"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert hub.hub_offline()


def test_offline_with_empty_cache_says_where_it_looked(hf_home: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(zoo.WeightsNotFoundError) as info:
        zoo.create_model("resnet50.tv2_in1k", pretrained=True)
    text = str(info.value)
    assert "HF_HUB_OFFLINE is set" in text and str(hf_home) in text and "zoo download resnet50.tv2_in1k" in text
    assert isinstance(info.value, FileNotFoundError)


# --- local files, adaptation, strictness ------------------------------------------------------------


def test_checkpoint_path_num_classes_and_in_chans(tmp_path: Path, caplog) -> None:
    source = zoo.create_model("resnet18").eval()
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    loaded = zoo.create_model("resnet18", checkpoint_path=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))
    with caplog.at_level(logging.INFO, logger="zoo"):
        gray = zoo.create_model("resnet18", checkpoint_path=path, in_chans=1, num_classes=10).eval()
    assert "the weights have a head of 1000 classes; initialized a 10-class head" in caplog.text
    torch.testing.assert_close(gray.conv1.weight, source.conv1.weight.sum(1, keepdim=True))
    with torch.no_grad():  # a gray image through the adapted conv = the same image as RGB through the original
        g = torch.randn(1, 1, 64, 64)
        torch.testing.assert_close(
            gray.forward_features(g), source.forward_features(g.expand(1, 3, 64, 64)), atol=1e-4, rtol=1e-4
        )
    five = zoo.create_model("resnet18", checkpoint_path=path, in_chans=5)
    torch.testing.assert_close(five.conv1.weight[:, 3:5], source.conv1.weight[:, :2] * 3 / 5)


def test_a_backbones_weights_take_a_fresh_head_when_num_classes_asks_for_one(tmp_path: Path, caplog) -> None:
    source = zoo.create_model("resnet18").eval()
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items() if not k.startswith("fc.")}, path)
    with caplog.at_level(logging.INFO, logger="zoo"):
        model = zoo.create_model("resnet18", checkpoint_path=path, num_classes=10).eval()
    assert "the weights have no head; initialized a 10-class head" in caplog.text and model.fc.out_features == 10
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), source.forward_features(x))
    with pytest.raises(zoo.StateDictError, match=r"fc\.weight"):  # no head, and none asked for: not silently random
        zoo.create_model("resnet18", checkpoint_path=path)


def test_a_checkpoint_with_an_ema_loads_the_ema_as_timm_does(tmp_path: Path) -> None:
    raw, ema = zoo.create_model("resnet20"), zoo.create_model("resnet20")
    torch.save({"state_dict": raw.state_dict(), "state_dict_ema": ema.state_dict(), "epoch": 9}, tmp_path / "c.pth")
    loaded = zoo.create_model("resnet20", checkpoint_path=tmp_path / "c.pth")
    torch.testing.assert_close(loaded.fc.weight, ema.fc.weight)
    assert not torch.equal(loaded.fc.weight, raw.fc.weight)
    import timm.models

    model = timm.create_model("resnet18", num_classes=10)
    torch.save({"model": model.state_dict(), "model_ema": {k: v + 1 for k, v in model.state_dict().items()}},
               tmp_path / "deit-style.pth")  # fmt: skip
    ours = zoo.create_model("resnet18", num_classes=10, checkpoint_path=tmp_path / "deit-style.pth")
    timm.models.load_checkpoint(model, str(tmp_path / "deit-style.pth"))  # use_ema=True, its default
    torch.testing.assert_close(ours.fc.weight, model.fc.weight)


def test_legacy_pth_loads_and_code_pickles_are_refused(tmp_path: Path) -> None:
    source = zoo.create_model("resnet20")
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, tmp_path / "ok.pth"
    )
    loaded = zoo.create_model("resnet20", checkpoint_path=tmp_path / "ok.pth")
    torch.testing.assert_close(loaded.fc.weight, source.fc.weight)
    torch.save({"model": source}, tmp_path / "code.pth")  # a pickled module needs its class code to load
    with pytest.raises(zoo.UnsafeCheckpointError, match="needs code execution"):
        zoo.create_model("resnet20", checkpoint_path=tmp_path / "code.pth")


def test_strict_keys(tmp_path: Path) -> None:
    state = dict(zoo.create_model("resnet20").state_dict())
    state["extra.weight"] = torch.zeros(1)
    del state["layer1.0.conv1.weight"]
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "bad.safetensors")
    with pytest.raises(zoo.StateDictError, match=r"missing keys: layer1.0.conv1.weight; unexpected keys: extra.weight"):
        zoo.create_model("resnet20", checkpoint_path=tmp_path / "bad.safetensors")
    with pytest.raises(
        zoo.StateDictError, match=r"misshapen keys: .*conv1.weight: weights \(16, 3, 3, 3\), model \(64, 3, 7, 7\)"
    ):
        zoo.create_model("resnet18", checkpoint_path=tmp_path / "bad.safetensors")


def test_local_dir_folder(tmp_path: Path) -> None:
    source = zoo.create_model("resnet20", num_classes=4)
    config = folder_config("resnet20", source.cfg.to_dict(), source.pretrained_cfg, num_features=64)
    save_model_folder(tmp_path / "run", source.state_dict(), config)
    loaded = zoo.create_model(f"local-dir:{tmp_path / 'run'}", pretrained=True)
    assert loaded.num_classes == 4
    torch.testing.assert_close(loaded.fc.weight, source.fc.weight)


def test_a_timm_style_folder_keeps_its_class_count_and_labels(tmp_path: Path) -> None:
    """No zoo_config: the top-level num_classes builds the head (as timm), its label_names name the classes, and
    a head that is not ImageNet's gets no ImageNet names."""
    source = zoo.create_model("resnet20", num_classes=10)
    save_model_folder(tmp_path / "f", source.state_dict(), {"architecture": "resnet20", "num_classes": 10,
                                                            "pretrained_cfg": {}})  # fmt: skip
    name = f"local-dir:{tmp_path / 'f'}"
    assert zoo.create_model(name).num_classes == 10
    assert zoo.create_model(name, pretrained=True).pretrained_cfg["label_names"] == ()
    labels = [f"class{i}" for i in range(10)]
    (tmp_path / "f" / "config.json").write_text(json.dumps({"architecture": "resnet20", "num_classes": 10,
                                                            "label_names": labels, "pretrained_cfg": {}}))  # fmt: skip
    assert zoo.create_model(name, pretrained=True).pretrained_cfg["label_names"] == tuple(labels)


def test_a_grayscale_checkpoint_builds_a_grayscale_model_unless_told_otherwise(tmp_path: Path) -> None:
    from zoo.io import save_safetensors

    gray = zoo.create_model("resnet20", in_chans=1)
    save_safetensors(tmp_path / "gray.safetensors", gray.state_dict())
    model = zoo.create_model("resnet20", checkpoint_path=tmp_path / "gray.safetensors")
    torch.testing.assert_close(model.conv1.weight, gray.conv1.weight)  # as saved, not cut or rescaled
    assert model.pretrained_cfg["input_size"][0] == 1
    asked = zoo.create_model("resnet20", checkpoint_path=tmp_path / "gray.safetensors", in_chans=3)
    assert asked.conv1.weight.shape[1] == 3  # in_chans given: adapted to it


def test_a_folder_of_a_model_with_other_input_channels_loads_as_saved(tmp_path: Path) -> None:
    """Its zoo_config says in_chans=1: the weights fit as they are, nothing adapted to 3 channels."""
    source = zoo.create_model("resnet20", in_chans=1, num_classes=10)
    config = folder_config("resnet20", source.cfg.to_dict(), source.pretrained_cfg, num_features=64)
    save_model_folder(tmp_path / "gray", source.state_dict(), config)
    loaded = zoo.create_model(f"local-dir:{tmp_path / 'gray'}", pretrained=True)
    torch.testing.assert_close(loaded.conv1.weight, source.conv1.weight)
    assert loaded.pretrained_cfg["input_size"] == (1, 32, 32) and len(loaded.pretrained_cfg["mean"]) == 1


def test_unknown_tag() -> None:
    with pytest.raises(
        zoo.UnknownModelError, match=r"unknown weights resnet50.tv3_in1k; resnet50 has .*resnet50.tv2_in1k"
    ):
        get_weights("resnet50.tv3_in1k")


# --- the zoo's own bundled weights ----------------------------------------------------------------------

BUNDLED = sorted(p.name for p in hub.bundled_dir().glob("*.c10*") if not p.name.startswith("."))  # not a staging folder


def test_bundled_weights_are_found_beside_a_checkout_imported_over_an_installed_copy(monkeypatch) -> None:
    import importlib.resources

    def not_installed(name: str):  # `pip install .`, then python run in the checkout: ./zoo has no _weights
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.delenv("ZOO_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr(importlib.resources, "files", not_installed)
    assert hub.bundled_dir() == Path(zoo.__file__).resolve().parent.parent / "weights"
    assert (hub.bundled_dir() / "resnet56.c10_kd2" / "model.safetensors").is_file()


def test_bundled_weights_are_registered() -> None:
    assert sorted(zoo.list_pretrained("*.c10*")) == BUNDLED


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_weights_load_offline_and_match_their_record(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    arch = name.split(".")[0]
    model = zoo.create_model(name, pretrained=True)  # no network: from weights/
    assert model.pretrained_cfg["weights"] == name and model.num_classes == 10
    _, record = get_weights(name)
    best = max((t for t in BUNDLED if t.startswith(f"{arch}.")), key=lambda t: get_weights(t)[1].top1 or 0)
    assert get_weights(arch)[0] == best  # the architecture's default is its best bundled weights
    folder = hub.bundled_dir() / name
    results = json.loads((folder / "results.json").read_text())
    assert record.top1 == pytest.approx(results["results"][0]["top1"], abs=0.005)
    assert record.num_params == sum(p.numel() for p in model.parameters())
    assert json.loads((folder / "config.json").read_text())["pretrained_cfg"]["tag"] == name.split(".")[1]
    assert (folder / "README.md").read_text().startswith("---\nlicense: apache-2.0")


def test_weight_records_refuse_bad_sizes() -> None:
    with pytest.raises(zoo.ConfigError, match=r"input_size: expected \(channels, height, width\).*\(3, 160, 4.353\)"):
        Weights("org/x", input_size=(3, 160, 4.353))  # type: ignore[arg-type]
    with pytest.raises(zoo.ConfigError, match=r"test_crop_pct: expected a fraction in \(0, 1\], got 95"):
        Weights("org/x", test_crop_pct=95)
    with pytest.raises(zoo.ConfigError, match=r"crop_pct: expected a fraction in \(0, 1\], got '0.9'"):
        Weights("org/x", crop_pct="0.9")  # type: ignore[arg-type]
    with pytest.raises(zoo.ConfigError, match=r"sha256: expected 64 lower-case hex digits, got 'AB12'"):
        Weights("org/x", sha256="AB12")


def test_a_folder_written_from_loaded_weights_does_not_inherit_their_file_facts(tmp_path: Path) -> None:
    """A fine-tuned copy of pinned weights is another file: the source's sha256 or revision would break it."""
    model = zoo.create_model("resnet20.c10_kd", pretrained=True)
    assert model.pretrained_cfg["sha256"]
    with torch.no_grad():
        model.fc.bias.add_(1.0)  # fine-tuned: not the pinned file any more
    cfg = {**model.pretrained_cfg, "revision": "0" * 40}
    config = folder_config("resnet20", model.cfg.to_dict(), cfg)
    assert not {"sha256", "revision", "filename", "bundled"} & set(config["pretrained_cfg"])
    save_model_folder(tmp_path / "tuned", model.state_dict(), config)
    loaded = zoo.create_model(f"local-dir:{tmp_path / 'tuned'}", pretrained=True)
    torch.testing.assert_close(loaded.fc.bias, model.fc.bias)


def test_a_file_in_the_overlay_and_a_checkpoint_path_together(tmp_path: Path) -> None:
    source = zoo.create_model("resnet20")
    save_model_folder(tmp_path, source.state_dict(), {})
    model = zoo.create_model("resnet20", checkpoint_path=tmp_path / "model.safetensors",
                             pretrained_cfg_overlay={"file": tmp_path / "other.safetensors"})  # fmt: skip
    torch.testing.assert_close(model.fc.weight, source.fc.weight)  # checkpoint_path wins, as documented


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float16, 5e-3), (torch.bfloat16, 5e-2)])
def test_a_half_precision_checkpoint_builds_an_fp32_model(tmp_path: Path, dtype: torch.dtype, tolerance: float) -> None:
    source = zoo.create_model("resnet20", pretrained=True).eval()
    path = tmp_path / "half.safetensors"
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in source.state_dict().items()}, path)
    model = zoo.create_model("resnet20", checkpoint_path=path).eval()
    assert {t.dtype for t in model.state_dict().values() if t.is_floating_point()} == {torch.float32}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got, want = model(x), source(x)  # an fp32 image in, as for any model (it failed: Half weights, Float input)
    assert (got - want).abs().max() <= tolerance * want.abs().max()  # the weights' rounding only


def test_an_overlay_that_moves_the_weights_loads_them_not_the_bundled_copy(
    hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, state = tiny_weights(10)
    with FakeHub({"someone/resnet20-tuned": {"model.safetensors": data}}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        model = zoo.create_model("resnet20", pretrained=True,
                                 pretrained_cfg_overlay={"hf_hub_id": "someone/resnet20-tuned"})  # fmt: skip
    torch.testing.assert_close(model.fc.weight, state["fc.weight"])  # not resnet20's bundled (and pinned) weights
    assert model.pretrained_cfg["hf_hub_id"] == "someone/resnet20-tuned"


def test_a_folders_crop_mode_is_kept_and_an_overlay_file_needs_pretrained(tmp_path: Path) -> None:
    source = zoo.create_model("resnet20", pretrained=True)
    config = folder_config("resnet20", source.cfg.to_dict(), {**source.pretrained_cfg, "crop_mode": "squash"})
    save_model_folder(tmp_path / "f", source.state_dict(), config)
    model = zoo.create_model(f"local-dir:{tmp_path / 'f'}", pretrained=True)
    assert model.pretrained_cfg["crop_mode"] == zoo.resolve_data_config(model)["crop_mode"] == "squash"
    overlaid = zoo.create_model("resnet20", pretrained=True, pretrained_cfg_overlay={"crop_mode": "squash"})
    assert zoo.resolve_data_config(overlaid)["crop_mode"] == "squash"  # as timm takes it
    with pytest.raises(zoo.ConfigError, match=r"crop_mode: 'zoom' is not one of 'center', 'squash'"):
        zoo.create_model("resnet20", pretrained=True, pretrained_cfg_overlay={"crop_mode": "zoom"})
    file = tmp_path / "f" / "model.safetensors"
    fresh = zoo.create_model("resnet20", pretrained_cfg_overlay={"file": file})  # as timm: a file is pretrained=True's
    assert not torch.equal(fresh.fc.weight, source.fc.weight)
    torch.testing.assert_close(zoo.create_model("resnet20", pretrained=True, pretrained_cfg_overlay={"file": file})
                               .fc.weight, source.fc.weight)  # fmt: skip
