// The kernels of kernels.c as torch operators: each checks its tensors' shapes, dtypes, devices and
// layouts before it touches memory (a wrong call raises ValueError in Python, not a crash), allocates its
// output, and has a Meta kernel giving the output's shape, so torch.compile traces through it.
//
// The operators are registered when `hotlora_register` is called with a namespace, not by
// TORCH_LIBRARY at load: a process may load two builds of the library (another kernels.c in
// bench/kernel_ab.py, the same build cached in two folders), and one namespace can be defined only once.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kernels.h"

namespace {

using at::Tensor;

int32_t threads() { return static_cast<int32_t>(at::get_num_threads()); }

bool cpu(const Tensor &t) { return t.device().is_cpu(); }

// A 2-d float32 tensor whose rows are contiguous (any row stride at least a row).
void check_rows(const Tensor &t, const char *name) {
  TORCH_CHECK_VALUE(t.dim() == 2, name, ": expected a 2-d tensor, got ", t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat, name, ": expected torch.float32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.stride(1) == 1 && t.stride(0) >= t.size(1), name, ": rows must be contiguous");
}

void check_device(std::initializer_list<const Tensor *> tensors, const char *what) {
  const auto device = (*tensors.begin())->device();
  TORCH_CHECK_VALUE(device.is_cpu() || device.is_meta(), what, ": tensors must be on the CPU");
  for (const Tensor *t : tensors) TORCH_CHECK_VALUE(t->device() == device, what, ": tensors on two devices");
}

Tensor empty(at::IntArrayRef sizes, const Tensor &like) { return at::empty(sizes, like.options().dtype(at::kFloat)); }

std::vector<int64_t> sizes() {
  return {hotlora_lanes(), hotlora_q8_group(), hotlora_q4_many(), hotlora_q4_many_rows()};
}

Tensor gemm_nt(const Tensor &x, const Tensor &w) {
  check_rows(x, "x");
  check_rows(w, "w");
  check_device({&x, &w}, "gemm_nt");
  TORCH_CHECK_VALUE(x.size(1) == w.size(1), "x has ", x.size(1), " features, w ", w.size(1));
  const int64_t m = x.size(0), n = w.size(0), k = x.size(1);
  Tensor y = empty({m, n}, x);
  if (cpu(x) && m && n)
    hotlora_gemm_nt(x.const_data_ptr<float>(), x.stride(0), w.const_data_ptr<float>(), w.stride(0),
                    y.mutable_data_ptr<float>(), n, m, n, k, threads());
  return y;
}

Tensor gemm_q8(const Tensor &x, const Tensor &values, const Tensor &scales) {
  check_rows(x, "x");
  check_device({&x, &values, &scales}, "gemm_q8");
  TORCH_CHECK_VALUE(values.dim() == 2 && values.scalar_type() == at::kChar && values.is_contiguous(),
                    "values: expected contiguous 2-d int8");
  const int64_t m = x.size(0), n = values.size(0), k = x.size(1), group = hotlora_q8_group();
  TORCH_CHECK_VALUE(k == values.size(1), "x has ", k, " features, w ", values.size(1));
  TORCH_CHECK_VALUE(k % group == 0 && scales.scalar_type() == at::kFloat && scales.is_contiguous() &&
                        scales.dim() == 2 && scales.size(0) == n && scales.size(1) == k / group,
                    "scales: expected float32 [", n, ", ", k / group, "]");
  Tensor y = empty({m, n}, x);
  if (cpu(x) && m && n)
    hotlora_gemm_q8(x.const_data_ptr<float>(), x.stride(0), values.const_data_ptr<int8_t>(),
                    scales.const_data_ptr<float>(), y.mutable_data_ptr<float>(), n, m, n, k, threads());
  return y;
}

bool q4_fits(int64_t in_features, int64_t blocksize) {
  return blocksize > 0 && blocksize % (2 * hotlora_lanes()) == 0 && in_features % blocksize == 0;
}

// The input width of an `out_features`-row weight in bitsandbytes' 4-bit layout, after checking that
// `packed`, `absmax` and `code` hold exactly that weight.
int64_t q4_in_features(const Tensor &packed, const Tensor &absmax, const Tensor &code, int64_t blocksize,
                       int64_t out_features) {
  check_device({&packed, &absmax, &code}, "4-bit weight");
  TORCH_CHECK_VALUE(packed.scalar_type() == at::kByte && packed.is_contiguous() && out_features > 0,
                    "packed: expected contiguous uint8");
  const int64_t k = packed.numel() * 2 / out_features;
  TORCH_CHECK_VALUE(k * out_features == packed.numel() * 2, "packed: ", packed.numel(), " bytes do not hold ",
                    out_features, " rows");
  TORCH_CHECK_VALUE(q4_fits(k, blocksize), k, " features in blocks of ", blocksize,
                    ": not a 4-bit layout this kernel takes");
  TORCH_CHECK_VALUE(absmax.scalar_type() == at::kFloat && absmax.is_contiguous() &&
                        absmax.numel() == out_features * k / blocksize,
                    "absmax: wrong size");
  TORCH_CHECK_VALUE(code.scalar_type() == at::kFloat && code.is_contiguous() && code.numel() == 16,
                    "code: expected 16 float32 values");
  return k;
}

Tensor gemm_q4(const Tensor &x, const Tensor &packed, const Tensor &absmax, const Tensor &code,
               int64_t blocksize, int64_t out_features, bool prefill) {
  check_rows(x, "x");
  const int64_t k = q4_in_features(packed, absmax, code, blocksize, out_features), m = x.size(0);
  check_device({&x, &packed}, "gemm_q4");
  TORCH_CHECK_VALUE(x.size(1) == k, "x has ", x.size(1), " features, the weight ", k);
  Tensor y = empty({m, out_features}, x);
  if (cpu(x) && m) {
    const auto fn = prefill ? hotlora_gemm_q4_prefill : hotlora_gemm_q4;
    const int32_t status = fn(x.const_data_ptr<float>(), x.stride(0), packed.const_data_ptr<uint8_t>(),
                              absmax.const_data_ptr<float>(), code.const_data_ptr<float>(), blocksize,
                              y.mutable_data_ptr<float>(), out_features, m, out_features, k, threads());
    TORCH_CHECK_WITH(OutOfMemoryError, status == 0, "the 4-bit kernel could not allocate its buffers");
  }
  return y;
}

// `weights`: each weight's packed, absmax and code in turn; `shapes`: each weight's blocksize and
// out_features in turn.
std::vector<Tensor> gemm_q4_many(const Tensor &x, at::TensorList weights, at::IntArrayRef shapes) {
  check_rows(x, "x");
  const int64_t count = static_cast<int64_t>(weights.size()) / 3, m = x.size(0), k = x.size(1);
  TORCH_CHECK_VALUE(weights.size() == static_cast<size_t>(3 * count) && shapes.size() == weights.size() / 3 * 2,
                    "gemm_q4_many: three tensors and two sizes per weight");
  TORCH_CHECK_VALUE(count >= 1 && count <= hotlora_q4_many() && m >= 1 && m <= hotlora_q4_many_rows(),
                    "gemm_q4_many takes 1 to ", hotlora_q4_many(), " weights and 1 to ", hotlora_q4_many_rows(),
                    " rows, not ", count, " and ", m);
  std::vector<Tensor> out;
  std::vector<int64_t> specs;
  for (int64_t i = 0; i < count; i++) {
    const Tensor &packed = weights[3 * i], &absmax = weights[3 * i + 1], &code = weights[3 * i + 2];
    const int64_t blocksize = shapes[2 * i], n = shapes[2 * i + 1];
    TORCH_CHECK_VALUE(q4_in_features(packed, absmax, code, blocksize, n) == k, "weight ", i,
                      " does not take ", k, " features");
    check_device({&x, &packed}, "gemm_q4_many");
    out.push_back(empty({m, n}, x));
    if (!cpu(x)) continue;
    for (const void *p : {packed.const_data_ptr(), absmax.const_data_ptr(), code.const_data_ptr()})
      specs.push_back(reinterpret_cast<intptr_t>(p));
    specs.push_back(blocksize);
    specs.push_back(reinterpret_cast<intptr_t>(out.back().mutable_data_ptr()));
    specs.push_back(n);
  }
  if (cpu(x)) {
    const int32_t status = hotlora_gemm_q4_many(x.const_data_ptr<float>(), x.stride(0), m, k, count,
                                                specs.data(), threads());
    TORCH_CHECK_WITH(OutOfMemoryError, status != -1, "the 4-bit kernel could not allocate its buffers");
    TORCH_CHECK_VALUE(status == 0, "gemm_q4_many: the kernel refused its arguments");
  }
  return out;
}

void gemm_nn(const Tensor &x, const Tensor &w, const Tensor &out, bool accumulate) {
  check_rows(x, "x");
  check_rows(w, "w");
  check_rows(out, "out");
  check_device({&x, &w, &out}, "gemm_nn");
  const int64_t m = x.size(0), k = x.size(1), n = w.size(1);
  TORCH_CHECK_VALUE(w.size(0) == k && out.size(0) == m && out.size(1) == n, "shapes ", x.sizes(), " @ ",
                    w.sizes(), " -> ", out.sizes());
  if (cpu(x) && m && n) {
    const int32_t status = hotlora_gemm_nn(x.const_data_ptr<float>(), x.stride(0), w.const_data_ptr<float>(),
                                           w.stride(0), out.mutable_data_ptr<float>(), out.stride(0), m, n, k,
                                           accumulate, threads());
    TORCH_CHECK_WITH(OutOfMemoryError, status == 0, "the LoRA prefill kernel could not allocate its buffers");
  }
}

void lora_decode(const Tensor &out, const Tensor &x, const Tensor &a_t, const Tensor &b_t, const Tensor &items) {
  check_device({&out, &x, &a_t, &b_t, &items}, "lora_decode");
  TORCH_CHECK_VALUE(out.scalar_type() == at::kFloat && x.scalar_type() == at::kFloat &&
                        a_t.scalar_type() == at::kFloat && b_t.scalar_type() == at::kFloat,
                    "lora_decode takes float32 only");
  TORCH_CHECK_VALUE(a_t.dim() == 2 && b_t.dim() == 2 && a_t.is_contiguous() && b_t.is_contiguous(),
                    "blocks: contiguous 2-d");
  TORCH_CHECK_VALUE(x.dim() >= 1 && out.dim() >= 1, "x and out: one row of features per row");
  const int64_t inner = a_t.size(0), width = a_t.size(1), outer = b_t.size(1);
  TORCH_CHECK_VALUE(b_t.size(0) == width && x.size(-1) == inner && out.size(-1) == outer,
                    "block and row shapes differ");
  TORCH_CHECK_VALUE(x.stride(-1) == 1 && out.stride(-1) == 1, "features must be contiguous");
  TORCH_CHECK_VALUE(x.numel() == x.size(0) * inner && out.numel() == out.size(0) * outer,
                    "one row of features per row");
  TORCH_CHECK_VALUE(items.scalar_type() == at::kInt && items.is_contiguous() && items.dim() == 2 &&
                        items.size(1) == 4,
                    "items: [n, 4] int32");
  if (!cpu(x)) return;
  const int32_t status = hotlora_lora_decode(
      x.const_data_ptr<float>(), x.stride(0), inner, a_t.const_data_ptr<float>(), b_t.const_data_ptr<float>(),
      width, outer, out.mutable_data_ptr<float>(), out.stride(0), std::min(x.size(0), out.size(0)),
      items.const_data_ptr<int32_t>(),
      static_cast<int32_t>(items.size(0)), threads());
  TORCH_CHECK_VALUE(status == 0, "lora_decode: an item names columns outside the block or rows outside the batch");
}

// Attention in transformers' layout: query [rows, heads, q, dim], key and value [rows, kv_heads, keys, dim]
// (any strides, dim contiguous), mask bool [rows, 1, q, keys] or none (causal over the last q keys);
// returns [rows, q, heads, dim]. `softcap` > 0 caps scores as softcap * tanh(s / softcap).
Tensor attention(const Tensor &query, const Tensor &key, const Tensor &value, const std::optional<Tensor> &mask,
                 double scale, double softcap) {
  TORCH_CHECK_VALUE(query.scalar_type() == at::kFloat && key.scalar_type() == at::kFloat &&
                        value.scalar_type() == at::kFloat,
                    "attention takes float32 only");
  TORCH_CHECK_VALUE(query.dim() == 4 && key.dim() == 4 && value.dim() == 4, "query, key and value: 4-d");
  check_device({&query, &key, &value}, "attention");
  const int64_t rows = query.size(0), heads = query.size(1), q_len = query.size(2), dim = query.size(3);
  const int64_t kv_heads = key.size(1), keys = key.size(2);
  const std::vector<int64_t> kv_shape{rows, kv_heads, keys, dim};
  TORCH_CHECK_VALUE(key.sizes() == at::IntArrayRef(kv_shape) && value.sizes() == at::IntArrayRef(kv_shape), "key ",
                    key.sizes(), " and value ", value.sizes(), " do not fit query ", query.sizes());
  TORCH_CHECK_VALUE(kv_heads > 0 && heads % kv_heads == 0, heads, " heads do not share ", kv_heads, " kv heads");
  TORCH_CHECK_VALUE(query.stride(3) == 1 && key.stride(3) == 1 && value.stride(3) == 1,
                    "the last dimension must be contiguous");
  TORCH_CHECK_VALUE(mask.has_value() || q_len <= keys, "causal: ", q_len, " queries over ", keys, " keys");
  Tensor allowed;
  if (mask.has_value()) {
    const std::vector<int64_t> mask_shape{rows, 1, q_len, keys};
    TORCH_CHECK_VALUE(mask->scalar_type() == at::kBool && mask->sizes() == at::IntArrayRef(mask_shape),
                      "mask: expected bool ", at::IntArrayRef(mask_shape));
    check_device({&query, &*mask}, "attention");
    allowed = mask->stride(3) == 1 ? *mask : mask->contiguous();
  }
  Tensor out = empty({rows, q_len, heads, dim}, query);
  if (cpu(query) && out.numel()) {
    const int32_t status = hotlora_attention(
        query.const_data_ptr<float>(), query.stride(0), query.stride(1), query.stride(2),
        key.const_data_ptr<float>(), key.stride(0), key.stride(1), key.stride(2), value.const_data_ptr<float>(),
        value.stride(0), value.stride(1), value.stride(2),
        allowed.defined() ? reinterpret_cast<const uint8_t *>(allowed.const_data_ptr<bool>()) : nullptr,
        allowed.defined() ? allowed.stride(0) : 0, allowed.defined() ? allowed.stride(2) : 0,
        out.mutable_data_ptr<float>(), out.stride(0), out.stride(1), out.stride(2), rows, heads, kv_heads, q_len,
        keys, dim, static_cast<float>(scale), static_cast<float>(softcap), threads());
    TORCH_CHECK_WITH(OutOfMemoryError, status == 0, "the attention kernel could not allocate its buffers");
  }
  return out;
}

// transformers' x * cos + rotate_half(x) * sin with the bits of its torch operations: x [rows, heads,
// positions, dim] (any strides, dim contiguous), cos and sin [rows, positions, dim] contiguous.
Tensor rotary(const Tensor &x, const Tensor &cos, const Tensor &sin) {
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat && cos.scalar_type() == at::kFloat &&
                        sin.scalar_type() == at::kFloat,
                    "rotary takes float32 only");
  TORCH_CHECK_VALUE(x.dim() == 4 && x.stride(3) == 1 && x.size(3) % 2 == 0, "x: 4-d, an even contiguous dim");
  check_device({&x, &cos, &sin}, "rotary");
  const int64_t rows = x.size(0), heads = x.size(1), positions = x.size(2), dim = x.size(3);
  const std::vector<int64_t> shape{rows, positions, dim};
  TORCH_CHECK_VALUE(cos.sizes() == at::IntArrayRef(shape) && sin.sizes() == at::IntArrayRef(shape) &&
                        cos.is_contiguous() && sin.is_contiguous(),
                    "cos and sin: expected contiguous ", at::IntArrayRef(shape), ", got ", cos.sizes());
  Tensor out = empty({rows, heads, positions, dim}, x);
  if (cpu(x))
    hotlora_rotary(x.const_data_ptr<float>(), x.stride(0), x.stride(1), x.stride(2), rows, heads, positions, dim,
                   cos.const_data_ptr<float>(), sin.const_data_ptr<float>(), out.mutable_data_ptr<float>());
  return out;
}

// bitsandbytes' fused CPU 4-bit kernels (nf4, fp4), as `hotlora_register` was given them: rows of bf16
// times a weight in bitsandbytes' packed CPU layout, `absmax` in bf16.
using bnb_gemv_fn = void (*)(int64_t M, int64_t N, int64_t K, const void *x, const uint8_t *w, const void *absmax,
                             void *out, int64_t blocksize, int64_t x_stride, int64_t out_stride);
bnb_gemv_fn bnb_gemv[2] = {nullptr, nullptr};

// A packed 4-bit layer's product through bitsandbytes' kernel, as `Linear4bit.forward` computes it: x
// (float32 or bf16, any leading shape) rounded to bf16, the product in bf16, returned in x's dtype.
Tensor bnb_gemv_4bit(const Tensor &x, const Tensor &weight, const Tensor &absmax, int64_t quant_type,
                     int64_t blocksize, int64_t out_features) {
  TORCH_CHECK_VALUE(x.dim() >= 1 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
                    "x: expected float32 or bfloat16, got ", x.scalar_type());
  check_device({&x, &weight, &absmax}, "bnb_gemv_4bit");
  TORCH_CHECK_VALUE(quant_type == 0 || quant_type == 1, "quant_type: 0 (nf4) or 1 (fp4), not ", quant_type);
  const int64_t k = x.size(-1), m = k ? x.numel() / k : 0;
  TORCH_CHECK_VALUE(out_features > 0 && weight.scalar_type() == at::kByte && weight.is_contiguous() &&
                        weight.numel() * 2 == out_features * k,
                    "weight: expected ", out_features, " x ", k, " packed 4-bit values");
  TORCH_CHECK_VALUE(blocksize > 0 && k % blocksize == 0 && absmax.scalar_type() == at::kBFloat16 &&
                        absmax.numel() == out_features * (k / blocksize),
                    "absmax: expected bfloat16, one per block of ", blocksize);
  const Tensor rows = x.reshape({m, k}).to(at::kBFloat16).contiguous();
  Tensor out = at::empty({m, out_features}, x.options().dtype(at::kBFloat16));
  if (cpu(x) && m) {
    const bnb_gemv_fn fn = bnb_gemv[quant_type];
    TORCH_CHECK_VALUE(fn != nullptr, "bitsandbytes' fused CPU 4-bit kernel was not found");
    fn(m, out_features, k, rows.const_data_ptr(), weight.const_data_ptr<uint8_t>(), absmax.const_data_ptr(),
       out.mutable_data_ptr(), blocksize, rows.stride(0), out.stride(0));
  }
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = out_features;
  return out.to(x.scalar_type()).view(shape);
}

template <typename F>
void both(torch::Library &lib, const char *name, F fn) {
  lib.impl(name, torch::dispatch(c10::DispatchKey::CPU, fn));
  lib.impl(name, torch::dispatch(c10::DispatchKey::Meta, fn));
}

std::vector<std::unique_ptr<torch::Library>> registered;  // a namespace lives while its Library does

}  // namespace

// Define and implement the operators in namespace `ns`; 0, or -1 (the reason on stderr) if torch refused.
// `bnb_nf4`, `bnb_fp4`: bitsandbytes' fused CPU kernels, or null where its library has none.
extern "C" int32_t hotlora_register(const char *ns, void *bnb_nf4, void *bnb_fp4) {
  bnb_gemv[0] = reinterpret_cast<bnb_gemv_fn>(bnb_nf4);
  bnb_gemv[1] = reinterpret_cast<bnb_gemv_fn>(bnb_fp4);
  try {
    auto lib = std::make_unique<torch::Library>(torch::Library::DEF, ns, std::nullopt, __FILE__, __LINE__);
    lib->def("sizes() -> int[]", &sizes);
    lib->def("gemm_nt(Tensor x, Tensor w) -> Tensor");
    lib->def("gemm_q8(Tensor x, Tensor values, Tensor scales) -> Tensor");
    lib->def("q4_in_features(Tensor packed, Tensor absmax, Tensor code, int blocksize, int out_features) -> int",
             &q4_in_features);
    lib->def("gemm_q4(Tensor x, Tensor packed, Tensor absmax, Tensor code, int blocksize, int out_features, "
             "bool prefill) -> Tensor");
    lib->def("gemm_q4_many(Tensor x, Tensor[] weights, int[] shapes) -> Tensor[]");
    lib->def("gemm_nn(Tensor x, Tensor w, Tensor(a!) out, bool accumulate) -> ()");
    lib->def("lora_decode(Tensor(a!) out, Tensor x, Tensor a_t, Tensor b_t, Tensor items) -> ()");
    lib->def("attention(Tensor query, Tensor key, Tensor value, Tensor? mask, float scale, float softcap) -> Tensor");
    lib->def("rotary(Tensor x, Tensor cos, Tensor sin) -> Tensor");
    lib->def("bnb_gemv_4bit(Tensor x, Tensor weight, Tensor absmax, int quant_type, int blocksize, "
             "int out_features) -> Tensor");
    both(*lib, "gemm_nt", TORCH_FN(gemm_nt));
    both(*lib, "gemm_q8", TORCH_FN(gemm_q8));
    both(*lib, "gemm_q4", TORCH_FN(gemm_q4));
    both(*lib, "gemm_q4_many", TORCH_FN(gemm_q4_many));
    both(*lib, "gemm_nn", TORCH_FN(gemm_nn));
    both(*lib, "lora_decode", TORCH_FN(lora_decode));
    both(*lib, "attention", TORCH_FN(attention));
    both(*lib, "rotary", TORCH_FN(rotary));
    both(*lib, "bnb_gemv_4bit", TORCH_FN(bnb_gemv_4bit));
    registered.push_back(std::move(lib));
    return 0;
  } catch (const std::exception &e) {
    fprintf(stderr, "hotlora: registering the CPU kernels as %s failed: %s\n", ns, e.what());
    return -1;
  }
}
