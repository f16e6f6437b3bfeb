"""The peer benchmark's parts that need neither torch nor aihwkit: the export, the agreement test, the missing-package message."""

import numpy as np
import pytest

from benchmarks import peer_export, peers, run
from pipeline.config import ModelConfig, TrainConfig
from pipeline.learning.models import build_model
from pipeline.learning.training import seed_everything, train


@pytest.fixture(scope="module")
def trained(tiny_data):
    seed_everything(0)
    model = build_model(ModelConfig(bits=1, hidden_units=(64, 32)))
    train(model, tiny_data, TrainConfig(epochs=2, batch_size=32), verbose=0)
    return model


def test_the_exported_mlp_computes_what_the_keras_model_does(trained, tiny_data):
    import tensorflow as tf

    blocks = peer_export.exported_mlp(trained)
    assert [block.name for block in blocks] == ["dense_1", "dense_2", "dense_out"]
    assert [block.signs_in for block in blocks] == [False, True, True]  # the first layer reads pixels
    assert all(set(np.unique(block.kernel)) == {-1.0, 1.0} for block in blocks)  # the kernels as deployed: +-1
    assert blocks[1].mean.shape == (32,) and blocks[1].variance.min() > 0  # the trained BatchNorm statistics
    images = tiny_data.images("test")
    logits = tf.keras.Model(trained.inputs, trained.get_layer("bn_dense_out").output)(images, training=False).numpy()
    exported = peer_export.exported_logits(blocks, images)
    np.testing.assert_allclose(exported, logits, rtol=1e-4, atol=1e-3)
    assert np.array_equal(exported.argmax(1), trained.predict(images, verbose=0).argmax(1))


def test_agreement_is_welchs_test_at_five_percent():
    rng = np.random.default_rng(0)
    same = peers.agreement("same", rng.normal(0.9, 0.01, 200), rng.normal(0.9, 0.01, 200))
    assert same.agree and same.ours[1] < same.ours[0] < same.ours[2]
    apart = peers.agreement("apart", rng.normal(0.9, 0.01, 200), rng.normal(0.895, 0.01, 200))  # 5 standard errors apart
    assert not apart.agree and apart.p_value < 1e-4
    assert peers.agreement("constant", [0.9, 0.9], [0.9, 0.9]).agree  # every chip the same in both tools
    assert not peers.agreement("constant apart", [0.9, 0.9], [0.8, 0.8]).agree
    with pytest.raises(ValueError, match="agreement of one chip: at least 2 chips"):
        peers.agreement("one chip", [0.9], [0.9, 0.8])


def test_a_missing_peer_package_is_a_clear_message_not_a_traceback(tmp_path, monkeypatch, capsys):
    peers.require(("numpy", "scipy"))  # installed: nothing to say
    with pytest.raises(peers.PeersMissing, match=r"needs no_such_peer \(not installed\); install them with: pip install -e"):
        peers.require(("numpy", "no_such_peer"))
    (tmp_path / "broken_peer.py").write_text("raise ImportError('undefined symbol: _ZN3c10')\n")  # aihwkit beside another torch
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(peers.PeersMissing, match=r"needs broken_peer \(ImportError: undefined symbol: _ZN3c10\) \(does not import\)"):
        peers.require(("numpy", "broken_peer"))
    monkeypatch.setattr(peers, "PACKAGES", ("numpy", "no_such_peer"))
    with pytest.raises(SystemExit) as exit_:
        run.main(["--only", "peers", "--output", str(tmp_path)])
    assert exit_.value.code == 2
    assert "--only peers: the peer benchmark needs no_such_peer" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()  # nothing measured, nothing written


def test_the_peer_section_is_measured_only_when_named():
    assert run.OPTIONAL_SECTIONS == ("peers",)
    with pytest.raises(SystemExit):
        run.main(["--only", "no_such_section"])
