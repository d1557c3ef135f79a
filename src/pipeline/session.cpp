#include "quant/pipeline/session.h"

#include <sys/resource.h>

#include <algorithm>
#include <cmath>

#include "quant/core/error.h"
#include "quant/io/io.h"
#include "quant/model/weights.h"
#include "quant/core/log.h"

namespace quant {

using nlohmann::json;

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
          {"bpw_linears", bpw_linears}, {"n_quantized", n_quantized}, {"n_kept", n_kept}, {"kernels", kernels}, {"tensors", t}};
}

OutputSession::OutputSession(const Model& source, const Plan& plan, RunOptions options)
    : source_(source), options_(std::move(options)), plan_(plan), start_(std::chrono::steady_clock::now()) {
  options_.format = plan_.format;
  staged_ = std::make_unique<StagedDir>(options_.out, options_.output);
  WriterOptions wo;
  wo.max_shard_bytes = options_.max_shard_bytes;
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"quantizer", "quant 0.1.0"},
                                             {"method", options_.method}};
  writer_ = std::make_unique<SafetensorsWriter>(staged_->path(), wo, meta);
}

OutputSession::~OutputSession() = default;

namespace {
// The float dtype a linear is written in: its stored dtype, or for an FP8 or int8 source (F8_E4M3
// or I8 weights read through their scales) the checkpoint's torch_dtype (bfloat16 when it names
// none), the dtype its dequantized weights are saved in.
DType float_dtype_of(const Model& m, const std::string& weight) {
  const DType d = m.store().get(weight).dtype;
  if (d != DType::F8_E4M3 && d != DType::I8) return d;
  const std::string& t = m.config().torch_dtype;
  return t == "float16" ? DType::F16 : t == "float32" ? DType::F32 : DType::BF16;
}
}  // namespace

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
                                  const Vec* bias, float input_scale) {
  check_interrupted();
  const LinearPlan& plan = plan_for(l);
  if (!plan.quantize) fail<Error>("linear '{}' is not planned for quantization", l.prefix);
  TensorReport r;
  r.name = l.prefix;
  r.quantized = true;
  r.note = plan.note();
  r.spec = plan.spec;
  r.n_params = l.out * l.in;
  const auto [sq_error, norm2] = m.error_and_norm(original);
  r.sq_error = sq_error;
  r.rel_error = norm2 > 0 ? std::sqrt(r.sq_error / norm2) : 0.0;
  const DType weight_dtype = float_dtype_of(source_, l.weight_name());
  const DType outlier_dtype = is_float(weight_dtype) ? weight_dtype : DType::F32;
  r.bpw = m.bits_per_weight(8 * static_cast<int>(dtype_size(outlier_dtype)));
  r.extra = std::move(extra);
  if (input_scale > 0.0f) r.extra["input_scale"] = input_scale;
  reports_.push_back(std::move(r));

  if (l.fused()) {  // Phi-3: written once every part of the stored tensor has arrived
    if (l.bias) fail<Error>("'{}': biases of fused linears are not supported", l.prefix);
    if (input_scale > 0.0f) fail<Error>("'{}': static input scales of fused linears are not supported", l.prefix);
    auto& parts = fused_q_[l.storage];
    parts.emplace_back(&l, m);
    if (parts.size() < n_siblings(l)) return;
    std::sort(parts.begin(), parts.end(), [](const auto& a, const auto& b) { return a.first->row_offset < b.first->row_offset; });
    std::vector<const QuantizedMatrix*> ms;
    for (const auto& part : parts) ms.push_back(&part.second);
    const QuantizedMatrix all = QuantizedMatrix::stack_rows(ms);
    formats::codec(plan_.format).write(*writer_, {l.storage_desc(), all, weight_dtype, {}, options_.method_config.value("desc_act", false), plan.spec.act});
    fused_q_.erase(l.storage);
    written_.insert(l.weight_name());
    return;
  }
  std::vector<float> b;
  if (l.bias) b = bias ? std::vector<float>(bias->data(), bias->data() + bias->size()) : source_.store().read_f32(l.bias_name());
  formats::codec(plan_.format).write(*writer_, {l, m, weight_dtype, b, options_.method_config.value("desc_act", false), plan.spec.act, input_scale});
  written_.insert(l.weight_name());
  if (l.bias) written_.insert(l.bias_name());
}

std::size_t OutputSession::n_siblings(const LinearDesc& l) const {
  if (!l.fused() || l.layer < 0) return 1;
  return storage_siblings(source_.layout().layers.at(static_cast<std::size_t>(l.layer)), l).size();
}

void OutputSession::put_linear_float(const LinearDesc& l, const Mat& w, const Vec& bias) {
  if (!l.fused()) {
    put_float(l.weight_name(), w.data(), {l.out, l.in});
    if (l.bias && bias.size()) put_float(l.bias_name(), bias.data(), {l.out});
    return;
  }
  auto& parts = fused_f_[l.storage];
  parts.emplace_back(&l, w);
  if (parts.size() < n_siblings(l)) return;
  Mat all(l.storage_rows, l.in);
  for (const auto& [d, m] : parts) all.middleRows(d->row_offset, d->out) = m;
  put_float(l.weight_name(), all.data(), {l.storage_rows, l.in});
  fused_f_.erase(l.storage);
}

namespace {

// The spec most quantized linears share (ties: the earliest): the config's top-level fields.
QuantSpec common_spec(const std::vector<LinearPlan>& plan) {
  std::vector<std::pair<QuantSpec, int>> counts;
  for (const auto& p : plan) {
    if (!p.quantize) continue;
    auto it = std::find_if(counts.begin(), counts.end(), [&](const auto& c) { return formats::same_spec(c.first, p.spec); });
    if (it == counts.end()) counts.emplace_back(p.spec, 1);
    else ++it->second;
  }
  if (counts.empty()) return QuantSpec{};
  return std::max_element(counts.begin(), counts.end(), [](const auto& a, const auto& b) { return a.second < b.second; })->first;
}

// The `dynamic` key of a linear: its own name, or for a fused sibling one pattern matching every
// sibling and the fused layer (GPTQModel matches module names, vLLM the fused prefix; both with
// re.match), e.g. ^model\.layers\.0\.self_attn\.(q_proj|k_proj|v_proj|qkv_proj)$.
std::string dynamic_key(const LinearDesc& l, const std::vector<LinearPlan>& plan) {
  const std::string fused = fused_prefix(l);
  if (fused == l.prefix) return fmt::format("^{}$", regex_escape(l.prefix));
  const std::string block = fused.substr(0, fused.rfind('.') + 1);
  std::string alternatives;
  for (const auto& p : plan) {
    if (fused_prefix(*p.desc) == fused) alternatives += p.desc->prefix.substr(block.size()) + "|";
  }
  return fmt::format("^{}({})$", regex_escape(block), alternatives + fused.substr(block.size()));
}

}  // namespace

json OutputSession::quantization_config() const {
  formats::ConfigInput in;
  in.base = common_spec(plan_.linears);
  std::set<std::string> blocks;
  for (const auto& p : plan_.linears) {
    const std::string key = dynamic_key(*p.desc, plan_.linears);
    if (p.desc->layer < 0) in.lm_head = p.quantize;
    if (!p.quantize) {
      if (p.desc->layer >= 0) {
        in.dynamic["-:" + key] = json::object();
        in.not_converted.push_back(p.desc->prefix);
        for (const std::string& name : {block_relative_name(*p.desc), block_relative_name(LinearDesc{fused_prefix(*p.desc), p.desc->kind, p.desc->layer})}) {
          if (blocks.insert(name).second) in.not_converted_blocks.push_back(name);
        }
      }
      continue;
    }
    if (!formats::same_spec(p.spec, in.base)) {
      in.dynamic["+:" + key] = {{"bits", p.spec.bits}, {"group_size", p.spec.group_size}, {"sym", p.spec.sym}};
    }
  }
  in.method = options_.method;
  in.method_config = options_.method_config;
  return formats::codec(plan_.format).config(in);
}

QuantizeReport OutputSession::finish() {
  for (const auto& p : plan_.linears) {
    if (p.quantize && !written_.count(p.desc->weight_name())) {
      fail<Error>("'{}' is planned for quantization but was never written; not publishing {}", p.desc->prefix,
                  staged_->final_path().string());
    }
  }
  writer_->on_add = nullptr;  // the rest is not journaled: a resumed run rewrites it
  pending_.clear();
  // FP8 and int8 sources: a kept linear is written dequantized, and no linear keeps its scale tensors.
  for (const LinearDesc* l : source_.linears()) {
    const std::string w = l->weight_name();
    if (!source_.store().contains(w) || (source_.store().get(w).dtype != DType::F8_E4M3 && source_.store().get(w).dtype != DType::I8)) continue;
    for (const char* s : {".weight_scale", ".weight_scale_inv", ".input_scale"}) written_.insert(l->tensor_prefix() + s);
    if (written_.count(w)) continue;
    const Mat x = load_linear(source_, l->storage_desc());
    writer_->add_f32(w, float_dtype_of(source_, w), {x.rows(), x.cols()}, std::span<const float>(x.data(), static_cast<std::size_t>(x.size())));
    written_.insert(w);
  }
  for (const auto& name : source_.store().names()) put_source(name);
  writer_->finish();
  const fs::path dir = staged_->path();
  json config = source_.config().raw;
  if (formats::codec(plan_.format).config) {
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
  rep.format = formats::format_name(plan_.format);
  rep.output = staged_->final_path();
  rep.tensors = reports_;
  std::vector<formats::PlannedLinear> planned;
  for (const auto& p : plan_.linears) planned.push_back({p.desc, p.quantize, p.spec});
  rep.kernels = formats::fast_kernels(plan_.format, planned);
  double bits_q = 0, params_q = 0, bits_all = 0, params_all = 0;
  for (const auto& p : plan_.linears) {
    if (p.desc->layer < 0) continue;
    const double n = static_cast<double>(p.desc->out * p.desc->in);
    params_all += n;
    if (!p.quantize) {
      bits_all += n * 8.0 * static_cast<double>(dtype_size(source_.store().get(p.desc->weight_name()).dtype));
      TensorReport r;
      r.name = p.desc->prefix;
      r.note = p.note();
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
  json summary = rep.to_json();
  if (!options_.job_id.empty()) summary["job_id"] = options_.job_id;
  write_file_atomic(dir / "quant_summary.json", summary.dump(2) + "\n");
  staged_->commit();
  if (!resume_dir_.empty()) {
    std::error_code ec;
    fs::remove_all(resume_dir_, ec);
  }
  return rep;
}

}  // namespace quant
