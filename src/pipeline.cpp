#include "quant/pipeline.h"

#include <sys/resource.h>

#include <cmath>

#include "quant/error.h"
#include "quant/io.h"
#include "quant/log.h"

namespace quant {

using nlohmann::json;
using formats::Format;

namespace {

bool copyable_side_file(const fs::path& p) {
  const std::string name = p.filename().string();
  if (name == "config.json" || name == "quantize_config.json" || name == "quant_summary.json" ||
      name.find(".safetensors") != std::string::npos) {
    return false;
  }
  const std::string ext = p.extension().string();
  return ext == ".json" || ext == ".model" || ext == ".txt" || ext == ".tiktoken" || ext == ".jinja";
}

}  // namespace

json QuantizeReport::to_json() const {
  json t = json::array();
  for (const auto& r : tensors) {
    json j = {{"name", r.name}, {"quantized", r.quantized}, {"params", r.n_params}};
    if (r.quantized) {
      j["bits"] = r.spec.bits;
      j["group_size"] = r.spec.group_size;
      j["sym"] = r.spec.sym;
      j["bpw"] = r.bpw;
      j["sq_error"] = r.sq_error;
      j["rel_error"] = r.rel_error;
    }
    if (!r.note.empty()) j["note"] = r.note;
    if (!r.extra.is_null() && !r.extra.empty()) j["extra"] = r.extra;
    t.push_back(j);
  }
  return {{"method", method}, {"format", format}, {"output", output.string()}, {"seconds", seconds}, {"peak_rss_bytes", peak_rss_bytes},
          {"bytes_in", bytes_in}, {"bytes_out", bytes_out}, {"bpw_quantized", bpw_quantized},
          {"bpw_linears", bpw_linears}, {"n_quantized", n_quantized}, {"n_kept", n_kept}, {"tensors", t}};
}

OutputSession::OutputSession(const Model& source, const Policy& policy, RunOptions options)
    : source_(source), options_(std::move(options)), start_(std::chrono::steady_clock::now()) {
  const auto& layout = source.layout();
  std::vector<const LinearDesc*> linears;
  for (const auto& layer : layout.layers) {
    for (const auto& l : layer.linears) linears.push_back(&l);
  }
  if (!layout.tied) {
    linears.push_back(&layout.lm_head);
  } else if (policy.decide("lm_head").quantize) {
    log::warn("lm_head is tied to the embedding and stays unquantized");
  }
  std::vector<std::string> unsupported;
  for (const LinearDesc* l : linears) {
    LinearPlan p;
    p.desc = l;
    const Decision d = policy.decide(l->prefix);
    p.quantize = d.quantize;
    p.spec = d.spec;
    p.note = d.reason == "defaults" ? "" : d.reason;
    if (p.quantize) {
      p.spec.validate();
      if (source.storage(*l) == LinearStorage::packed) {
        fail("{}: '{}' is already quantized; quantize the original checkpoint", source.dir().string(), l->prefix);
      }
      const std::string why = formats::unsupported_reason(options_.format, l->out, l->in, p.spec);
      if (!why.empty()) {
        unsupported.push_back(fmt::format("tensor '{}': {}", l->weight_name(), why));
        p.quantize = false;
        p.note = "kept in source dtype: " + why;
      }
      if (p.quantize && options_.format == Format::gptq && p.spec.bits != 2 && p.spec.bits != 3 &&
          p.spec.bits != 4 && p.spec.bits != 8) {
        log::warn("{}: {}-bit gptq tensors load in quant, but transformers/vLLM kernels accept 2, 3, 4 and 8 bits", l->prefix, p.spec.bits);
      }
    }
    plan_.push_back(p);
  }
  const bool codebooks = options_.method == "kmeans";
  if (codebooks && (options_.format == Format::gptq || options_.format == Format::awq)) {
    fail<UsageError>("k-means codebooks cannot be stored in the {} format (affine scale/zero only); use --format lut or dense",
                     formats::format_name(options_.format));
  }
  if (!codebooks && options_.format == Format::lut) {
    fail<UsageError>("the lut format stores k-means codebooks; {} writes gptq, awq or dense", options_.method);
  }
  if (!unsupported.empty() && !options_.skip_unsupported) {
    std::string more;
    if (unsupported.size() > 1) more = fmt::format(" (and {} more tensors the {} format cannot hold, e.g. {})", unsupported.size() - 1,
                                                   formats::format_name(options_.format), unsupported.back());
    fail("{}: {}{}; pass --skip-unsupported to keep such tensors unquantized, or use --format dense",
         source.store().file_of(plan_.front().desc->weight_name()).string(), unsupported.front(), more);
  }
  staged_ = std::make_unique<StagedDir>(options_.out, options_.force);
  WriterOptions wo;
  wo.max_shard_bytes = options_.max_shard_bytes;
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"quantizer", "quant 0.1.0"},
                                             {"method", options_.method}};
  writer_ = std::make_unique<SafetensorsWriter>(staged_->path(), wo, meta);
}

OutputSession::~OutputSession() = default;

const LinearPlan& OutputSession::plan_for(const LinearDesc& linear) const {
  for (const auto& p : plan_) {
    if (p.desc->prefix == linear.prefix) return p;
  }
  fail<Error>("no plan for linear '{}'", linear.prefix);
}

std::int64_t OutputSession::n_to_quantize() const {
  std::int64_t n = 0;
  for (const auto& p : plan_) n += p.quantize;
  return n;
}

void OutputSession::put_source(const std::string& name) {
  if (written_.count(name)) return;
  const TensorInfo& t = source_.store().get(name);
  writer_->add(name, t.dtype, t.shape, source_.store().bytes(name));
  written_.insert(name);
}

void OutputSession::put_float(const std::string& name, const float* data, std::vector<std::int64_t> shape) {
  const TensorInfo& t = source_.store().get(name);
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  writer_->add_f32(name, is_float(t.dtype) ? t.dtype : DType::F32, std::move(shape),
                   std::span<const float>(data, static_cast<std::size_t>(n)));
  written_.insert(name);
}

void OutputSession::put_quantized(const LinearDesc& l, const QuantizedMatrix& m, const Mat& original, json extra,
                                  const Vec* bias) {
  check_interrupted();
  const LinearPlan& plan = plan_for(l);
  if (!plan.quantize) fail<Error>("linear '{}' is not planned for quantization", l.prefix);
  // The dequantized matrix is materialized only where it is written (dense format).
  const Mat deq = options_.format == Format::dense ? m.dequantize() : Mat();
  TensorReport r;
  r.name = l.prefix;
  r.quantized = true;
  r.note = plan.note;
  r.spec = plan.spec;
  r.n_params = l.out * l.in;
  const auto [sq_error, norm2] = m.error_and_norm(original);
  r.sq_error = sq_error;
  r.rel_error = norm2 > 0 ? std::sqrt(r.sq_error / norm2) : 0.0;
  const DType weight_dtype = source_.store().get(l.weight_name()).dtype;
  const DType outlier_dtype = is_float(weight_dtype) ? weight_dtype : DType::F32;
  r.bpw = m.bits_per_weight(8 * static_cast<int>(dtype_size(outlier_dtype)));
  r.extra = std::move(extra);
  reports_.push_back(std::move(r));

  const std::string& p = l.prefix;
  if (m.non_uniform() != (options_.format == Format::lut || options_.format == Format::dense)) {
    if (m.non_uniform()) fail<Error>("'{}': codebooks cannot be stored in the {} format", p, formats::format_name(options_.format));
    if (options_.format == Format::lut) fail<Error>("'{}': the lut format needs codebooks", p);
  }
  // The packed formats store scales / codebooks (and dense float16 checkpoints store weights)
  // as float16: a value beyond its range would be written as inf.
  auto check_f16 = [&](std::span<const float> v, const char* what) {
    float worst = 0.0f;
    for (float x : v) worst = std::max(worst, std::abs(x));
    if (worst > 65504.0f) {
      fail("'{}': a {} of {:g} does not fit float16 (largest 65504), which the {} format stores it in; use "
           "--format dense with a float32 model, or keep the tensor (--rule '{}=skip')",
           l.weight_name(), what, worst, formats::format_name(options_.format), regex_escape(p));
    }
  };
  if (options_.format == Format::gptq || options_.format == Format::awq) check_f16(m.scales, "group scale");
  if (options_.format == Format::lut) check_f16(m.lut, "codebook value");
  if (options_.format == Format::dense && weight_dtype == DType::F16) {
    check_f16(std::span<const float>(deq.data(), static_cast<std::size_t>(deq.size())), "dequantized weight");
  }
  auto put_bias = [&](DType dtype) {
    if (!l.bias) return;
    const std::vector<float> b = bias ? std::vector<float>(bias->data(), bias->data() + bias->size())
                                      : source_.store().read_f32(l.bias_name());
    writer_->add_f32(l.bias_name(), dtype, {l.out}, b);
    written_.insert(l.bias_name());
  };
  switch (options_.format) {
    case Format::dense:
      writer_->add_f32(l.weight_name(), weight_dtype, {l.out, l.in}, std::span<const float>(deq.data(), static_cast<std::size_t>(deq.size())));
      put_bias(source_.store().get(l.weight_name()).dtype);
      break;
    case Format::gptq: {
      const auto t = formats::pack_gptq(m);
      writer_->add_pod<std::int32_t>(p + ".qweight", DType::I32, {l.in * m.bits / 32, l.out}, t.qweight);
      writer_->add_pod<std::int32_t>(p + ".qzeros", DType::I32, {m.n_groups, l.out * m.bits / 32}, t.qzeros);
      writer_->add_pod<std::uint16_t>(p + ".scales", DType::F16, {m.n_groups, l.out}, t.scales);
      writer_->add_pod<std::int32_t>(p + ".g_idx", DType::I32, {l.in}, t.g_idx);
      put_bias(DType::F16);
      break;
    }
    case Format::awq: {
      if (!m.trivial_g_idx()) fail<Error>("'{}': the awq layout cannot store an act-order permutation", p);
      const auto t = formats::pack_awq(m);
      writer_->add_pod<std::int32_t>(p + ".qweight", DType::I32, {l.in, l.out / 8}, t.qweight);
      writer_->add_pod<std::int32_t>(p + ".qzeros", DType::I32, {m.n_groups, l.out / 8}, t.qzeros);
      writer_->add_pod<std::uint16_t>(p + ".scales", DType::F16, {m.n_groups, l.out}, t.scales);
      put_bias(DType::F16);
      break;
    }
    case Format::lut: {
      const auto t = formats::pack_lut(m);
      writer_->add_pod<std::int32_t>(p + ".qweight", DType::I32, {formats::code_rows(l.in, m.bits), l.out}, t.qweight);
      std::vector<std::int64_t> lut_shape = {l.out, m.n_centroids()};
      if (m.n_groups > 1) lut_shape = {l.out, m.n_groups, m.n_centroids()};
      writer_->add_pod<std::uint16_t>(p + ".lookup_table", DType::F16, lut_shape, t.lookup_table);
      if (!t.outlier_rowptr.empty()) {
        writer_->add_pod<std::int32_t>(p + ".outlier_rowptr", DType::I32, {l.out + 1}, t.outlier_rowptr);
        writer_->add_pod<std::int32_t>(p + ".outlier_cols", DType::I32, {m.n_outliers()}, t.outlier_cols);
        writer_->add_f32(p + ".outlier_vals", outlier_dtype, {m.n_outliers()}, t.outlier_vals);
      }
      put_bias(DType::F16);
      break;
    }
  }
  written_.insert(l.weight_name());
}

json OutputSession::quantization_config() const {
  const QuantSpec* first = nullptr;
  for (const auto& p : plan_) {
    if (p.quantize) {
      first = &p.spec;
      break;
    }
  }
  QuantSpec base = first ? *first : QuantSpec{};
  bool lm_head = false;
  json dynamic = json::object();
  std::vector<std::string> not_converted;
  for (const auto& p : plan_) {
    const std::string key = fmt::format("^{}$", regex_escape(p.desc->prefix));
    if (p.desc->layer < 0) lm_head = p.quantize;
    if (!p.quantize) {
      if (p.desc->layer >= 0) {
        dynamic["-:" + key] = json::object();
        not_converted.push_back(p.desc->prefix);
      }
      continue;
    }
    if (p.spec.bits != base.bits || p.spec.group_size != base.group_size || p.spec.sym != base.sym) {
      dynamic["+:" + key] = {{"bits", p.spec.bits}, {"group_size", p.spec.group_size}, {"sym", p.spec.sym}};
    }
  }
  json meta = {{"quantizer", {"quant:0.1.0"}}, {"method", options_.method}};
  if (options_.format == Format::gptq) {
    json q = {{"quant_method", "gptq"}, {"bits", base.bits}, {"group_size", base.group_size},
              {"desc_act", false}, {"sym", base.sym}, {"static_groups", false},
              {"true_sequential", true}, {"damp_percent", 0.01}, {"checkpoint_format", "gptq"},
              {"lm_head", lm_head}, {"meta", meta}};
    for (auto it = options_.method_config.begin(); it != options_.method_config.end(); ++it) q[it.key()] = it.value();
    if (!dynamic.empty()) q["dynamic"] = dynamic;
    return q;
  }
  if (options_.format == Format::lut) {
    // SqueezeLLM's key is wbits (what vLLM's squeezellm loader reads); the rest describes
    // the codebooks and how they were found.
    json q = {{"quant_method", "squeezellm"}, {"wbits", base.bits}, {"bits", base.bits},
              {"group_size", base.group_size}, {"meta", meta}};
    for (auto it = options_.method_config.begin(); it != options_.method_config.end(); ++it) q[it.key()] = it.value();
    q["modules_to_not_convert"] = not_converted.empty() ? json(nullptr) : json(not_converted);
    if (!dynamic.empty()) q["dynamic"] = dynamic;
    return q;
  }
  json q = {{"quant_method", "awq"}, {"bits", base.bits}, {"group_size", base.group_size},
            {"zero_point", true}, {"version", "gemm"}, {"meta", meta}};
  for (auto it = options_.method_config.begin(); it != options_.method_config.end(); ++it) q[it.key()] = it.value();
  q["modules_to_not_convert"] = not_converted.empty() ? json(nullptr) : json(not_converted);
  return q;
}

QuantizeReport OutputSession::finish() {
  writer_->on_add = nullptr;  // the rest is not journaled: a resumed run rewrites it
  pending_.clear();
  for (const auto& name : source_.store().names()) put_source(name);
  writer_->finish();
  const fs::path dir = staged_->path();
  json config = source_.config().raw;
  if (options_.format != Format::dense) {
    const json qc = quantization_config();
    config["quantization_config"] = qc;
    write_file_atomic(dir / "quantize_config.json", qc.dump(2) + "\n");
  } else {
    config.erase("quantization_config");
  }
  write_file_atomic(dir / "config.json", config.dump(2) + "\n");
  for (const auto& e : fs::directory_iterator(source_.dir())) {
    if (e.is_regular_file() && copyable_side_file(e.path())) {
      write_file_atomic(dir / e.path().filename(), read_text_file(e.path()));
    }
  }

  QuantizeReport rep;
  rep.method = options_.method;
  rep.format = formats::format_name(options_.format);
  rep.output = staged_->final_path();
  rep.tensors = reports_;
  double bits_q = 0, params_q = 0, bits_all = 0, params_all = 0;
  for (const auto& p : plan_) {
    if (p.desc->layer < 0) continue;
    const double n = static_cast<double>(p.desc->out * p.desc->in);
    params_all += n;
    if (!p.quantize) {
      bits_all += n * 8.0 * static_cast<double>(dtype_size(source_.store().get(p.desc->weight_name()).dtype));
      TensorReport r;
      r.name = p.desc->prefix;
      r.note = p.note;
      r.n_params = p.desc->out * p.desc->in;
      rep.tensors.push_back(r);
      ++rep.n_kept;
    }
  }
  for (const auto& r : reports_) {
    ++rep.n_quantized;
    bits_q += r.bpw * static_cast<double>(r.n_params);
    params_q += static_cast<double>(r.n_params);
    if (r.name != "lm_head") bits_all += r.bpw * static_cast<double>(r.n_params);
  }
  rep.bpw_quantized = params_q > 0 ? bits_q / params_q : 0;
  rep.bpw_linears = params_all > 0 ? bits_all / params_all : 0;
  for (const auto& f : source_.store().files()) rep.bytes_in += fs::file_size(f.path());
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_regular_file()) rep.bytes_out += e.file_size();
  }
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  rusage ru{};
  if (getrusage(RUSAGE_SELF, &ru) == 0) rep.peak_rss_bytes = static_cast<std::uint64_t>(ru.ru_maxrss) * 1024;
  write_file_atomic(dir / "quant_summary.json", rep.to_json().dump(2) + "\n");
  staged_->commit();
  if (!resume_dir_.empty()) {
    std::error_code ec;
    fs::remove_all(resume_dir_, ec);
  }
  return rep;
}

}  // namespace quant
