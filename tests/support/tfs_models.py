"""Tiny SavedModels of the kinds TF Serving serves, written by the tests: `y = a*x + b` in TF2 and TF1 style.

Each has predict, classify and regress signatures over the same variables (`a`, `b`), so a test
knows every answer: with a=0.5, b=2, x=2 gives 3. The classify and regress signatures read
`tf.Example`s with a float feature `x`. The TF2 model adds signatures that answer a scalar, typed
outputs of several dtypes, and string classes; the TF1 one is built with `tf.compat.v1` graphs,
reference variables, an asset and a legacy init op, as TF Serving's own `half_plus_two` is.
"""

from __future__ import annotations

from pathlib import Path

A, B = 0.5, 2.0


def linear(x: float) -> float:
    """What every `y` signature answers for `x`."""
    return A * x + B


def write_tf2_model(export_dir: str | Path, a: float = A, b: float = B) -> Path:
    """A `tf.saved_model.save` model: `serving_default` (x [?,1] -> y), `classify_x_to_y`, `regress_x_to_y`, more.

    Signatures:
        serving_default: predict, x float [?,1] -> y.
        classify_x_to_y: classify, serialized examples -> scores [?,1].
        classify_with_classes: classify, examples -> classes (string [?,2]) and scores [?,2].
        regress_x_to_y: regress, examples -> outputs [?,1].
        scalar_y: predict, x float (any shape) -> a scalar.
        typed: predict, x float [?] -> float, int64, int32, bool, string, double and half outputs.
    """
    import tensorflow as tf

    features = {"x": tf.io.FixedLenFeature([1], tf.float32)}

    class Linear(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = tf.Variable(a, name="a")
            self.b = tf.Variable(b, name="b")

        def y(self, x: tf.Tensor) -> tf.Tensor:
            return self.a * x + self.b

        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def predict(self, x: tf.Tensor) -> dict:
            return {"y": self.y(x)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, serialized: tf.Tensor) -> dict:
            return {"scores": self.y(tf.io.parse_example(serialized, features)["x"])}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify_with_classes(self, serialized: tf.Tensor) -> dict:
            y = self.y(tf.io.parse_example(serialized, features)["x"])
            n = tf.shape(y)[0]
            return {
                "classes": tf.tile(tf.constant([["low", "high"]]), [n, 1]),
                "scores": tf.concat([1.0 - y, y], axis=1),
            }

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, serialized: tf.Tensor) -> dict:
            return {"outputs": self.y(tf.io.parse_example(serialized, features)["x"])}

        @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="x")])
        def scalar_y(self, x: tf.Tensor) -> dict:
            return {"y": tf.reduce_sum(self.y(x))}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def typed(self, x: tf.Tensor) -> dict:
            y = self.y(x)
            return {
                "float": y,
                "double": tf.cast(y, tf.float64),
                "half": tf.cast(y, tf.float16),
                "int64": tf.cast(y, tf.int64),
                "int32": tf.cast(y, tf.int32),
                "bool": y > 2.5,
                "string": tf.strings.as_string(y, precision=1),
            }

    module = Linear()
    signatures = {
        "serving_default": module.predict,
        "classify_x_to_y": module.classify,
        "classify_with_classes": module.classify_with_classes,
        "regress_x_to_y": module.regress,
        "scalar_y": module.scalar_y,
        "typed": module.typed,
    }
    concrete = {name: fn.get_concrete_function() for name, fn in signatures.items()}
    tf.saved_model.save(module, str(export_dir), signatures=concrete)
    # tf.saved_model.save names every signature's method "predict"; classify and regress ones say what they are.
    _set_methods(
        Path(export_dir),
        {
            "classify_x_to_y": "tensorflow/serving/classify",
            "classify_with_classes": "tensorflow/serving/classify",
            "regress_x_to_y": "tensorflow/serving/regress",
        },
    )
    return Path(export_dir)


def _set_methods(export_dir: Path, methods: dict[str, str]) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    path = export_dir / "saved_model.pb"
    saved = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    for meta_graph in saved.meta_graphs:
        for name, method in methods.items():
            meta_graph.signature_def[name].method_name = method
    path.write_bytes(saved.SerializeToString())


def write_tf1_model(export_dir: str | Path, a: float = A, b: float = B) -> Path:
    """A TF1-style SavedModel (`SavedModelBuilder`): reference variables, an asset, a legacy init op.

    Signatures: `serving_default` (predict; x is parsed from examples, so its tensor is not a
    placeholder, as in TF Serving's half_plus_two), `classify_x_to_y`, `regress_x_to_y`.
    """
    import tensorflow as tf

    v1 = tf.compat.v1
    export_dir = Path(export_dir)
    asset_source = export_dir.parent / f"{export_dir.name}-asset.txt"
    asset_source.parent.mkdir(parents=True, exist_ok=True)
    asset_source.write_text("asset-file-contents")
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        with v1.variable_scope("", use_resource=False):
            var_a = v1.Variable(a, name="a")
            var_b = v1.Variable(b, name="b")
        serialized = v1.placeholder(tf.string, name="tf_example", shape=[None])
        parsed = v1.parse_example(serialized, {"x": v1.FixedLenFeature([1], tf.float32)})
        x = tf.identity(parsed["x"], name="x")
        y = tf.add(tf.multiply(var_a, x), var_b, name="y")
        asset_path = tf.constant(str(asset_source))
        v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, asset_path)
        filename = v1.Variable("", name="filename_tensor", trainable=False, collections=[])
        init_op = tf.group(filename.assign(asset_path), name="legacy_init_op")
        session.run(v1.global_variables_initializer())
        info = v1.saved_model.utils.build_tensor_info
        build = v1.saved_model.signature_def_utils.build_signature_def
        predict, classify, regress = (f"tensorflow/serving/{m}" for m in ("predict", "classify", "regress"))
        builder = v1.saved_model.builder.SavedModelBuilder(str(export_dir))
        builder.add_meta_graph_and_variables(
            session,
            [v1.saved_model.tag_constants.SERVING],
            signature_def_map={
                "serving_default": build({"x": info(x)}, {"y": info(y)}, predict),
                "classify_x_to_y": build(
                    {"inputs": info(serialized)}, {"scores": info(y)}, "tensorflow/serving/classify"
                ),
                "regress_x_to_y": build(
                    {"inputs": info(serialized)}, {"outputs": info(y)}, "tensorflow/serving/regress"
                ),
            },
            assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
            legacy_init_op=init_op,
        )
        builder.save()
    return export_dir
