import numpy as np

from pipeline.config import ModelConfig, TrainConfig
from pipeline.evaluation.clean import confusion_matrix, evaluate
from pipeline.learning.models import build_model
from pipeline.learning.training import graph_memory_released, seed_everything, train


def train_once(data, seed):
    seed_everything(seed)
    model = build_model(ModelConfig(bits=1, hidden_units=(64,)))
    result = train(model, data, TrainConfig(epochs=3, batch_size=32, seed=seed), verbose=0)
    return model, result


def test_training_learns_and_reports_history(tiny_data):
    model, result = train_once(tiny_data, seed=1)
    assert result.epochs_run == 3
    assert set(result.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert result.history["loss"][-1] < result.history["loss"][0]
    # Ten balanced classes: chance is 10 %; a 1-bit MLP on real digits does far better after 3 epochs.
    assert evaluate(model, tiny_data).test_accuracy > 0.6


def test_same_seed_same_numbers(tiny_data):
    (model_a, result_a), (model_b, result_b) = train_once(tiny_data, 5), train_once(tiny_data, 5)
    assert result_a.history == result_b.history
    for a, b in zip(model_a.get_weights(), model_b.get_weights()):
        np.testing.assert_array_equal(a, b)
    _, result_c = train_once(tiny_data, 6)
    assert result_c.history["loss"] != result_a.history["loss"]


def test_evaluation_matches_a_direct_count(tiny_data):
    model, _ = train_once(tiny_data, seed=2)
    evaluation = evaluate(model, tiny_data)
    predicted = model.predict(tiny_data.images("test"), verbose=0).argmax(axis=1)
    assert evaluation.test_accuracy == np.mean(predicted == tiny_data.y_test)
    assert evaluation.confusion.sum() == len(tiny_data.y_test)
    assert np.trace(evaluation.confusion) == np.sum(predicted == tiny_data.y_test)
    assert confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]))[1].tolist()[:2] == [1, 1]


def test_graph_memory_is_released_after_each_model(tiny_data):
    """TensorFlow keeps every traced custom gradient (Larq's quantizers, ours, Keras' metrics) in a
    global registry that pins the whole traced graph. Inside the block the graphs of a deleted
    model stay alive; after it they are garbage, so a worker training model after model stays flat."""
    import gc

    from tensorflow.python.framework import ops
    from tensorflow.python.framework.func_graph import FuncGraph

    from pipeline.perturbation import PerturbationConfig
    from pipeline.hwmodel.chips import attach_hardware

    def graphs():
        gc.collect()
        return sum(isinstance(o, FuncGraph) for o in gc.get_objects())

    def custom_gradients():
        return {name for name in ops._gradient_registry._registry if name.startswith("CustomGradient-")}

    def train_one():
        seed_everything(0)
        config = ModelConfig(bits=1, hidden_units=(16,))
        levels = PerturbationConfig(noise_sigma=0.2, weight_dev_pct=10, clip_mode="relative", clip_fraction=0.8)
        model = attach_hardware(build_model(config), levels, levels.targets(config))
        train(model, tiny_data, TrainConfig(epochs=1), verbose=0)

    with graph_memory_released():
        train_one()  # warm-up: TensorFlow's own first-use caches
    baseline, registered = graphs(), custom_gradients()
    for _ in range(2):
        with graph_memory_released():
            train_one()
            assert graphs() > baseline and len(custom_gradients() - registered) >= 2  # the model is gone, its graphs are not
        assert graphs() == baseline and custom_gradients() == registered
