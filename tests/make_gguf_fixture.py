#!/usr/bin/env python3
"""Write tests/fixtures/gguf/gguf_py_small.gguf with the PyPI `gguf` package's own writer, so
the reader is checked against a GGUF that nobody here wrote (tests/gguf_interop.rs). It is also
the seed of the gguf_raw fuzz target.

    python3 -m venv v && v/bin/pip install gguf numpy && v/bin/python tests/make_gguf_fixture.py
"""
import os
import numpy as np
import gguf

out = os.path.join(os.path.dirname(__file__), "fixtures", "gguf", "gguf_py_small.gguf")
w = gguf.GGUFWriter(out, arch="qwen3moe")
w.add_name("gguf-py fixture")
w.add_uint32("test.u32", 4000000000)
w.add_int32("test.i32", -7)
w.add_float32("test.f32", 1.5)
w.add_float64("test.f64", -2.25)
w.add_bool("test.bool", True)
w.add_string("test.str", "héllo ✓")
w.add_array("test.arr_i32", [1, -2, 3])
w.add_array("test.arr_str", ["a", "", "βγ"])
w.add_uint64("test.u64", 2**63 + 5)
w.add_int64("test.i64", -(2**62))
rng = np.random.default_rng(7)
# numpy shape is reversed from ggml's ne: (rows, cols) = ne {cols, rows}
w.add_tensor("a.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
w.add_tensor("b.weight", rng.standard_normal((2, 64)).astype(np.float16))
q8 = gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
w.add_tensor("c.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print("wrote", out, os.path.getsize(out), "bytes")
