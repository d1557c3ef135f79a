// OutputSession's resume journal: `<out>.resume/` beside the output, never under its name.
//   state.json      fingerprint (model, calibration, settings) and layers_done
//   layer-N/        model.safetensors with the tensors written while layer N was quantized,
//                   journal.json with their order, the layer's tensor reports and the source
//                   tensors accounted for so far
//   hidden-N/       model.safetensors with the hidden states after layer N (h.0, h.1, ...)
// Each directory is written as `X.tmp`, fsynced and renamed; state.json — holding the SHA-256 of
// every journal file — is replaced atomically last, so a run killed at any point leaves a journal
// that is consistent up to some layer. On resume every file is checked against its hash: a
// changed, missing or unreadable entry is never trusted — the journal is discarded (with a
// warning naming the file) and the layers are recomputed.
#include <fmt/format.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "quant/core/error.h"
#include "quant/core/interrupt.h"
#include "quant/io/hash.h"
#include "quant/core/log.h"
#include "quant/pipeline/session.h"

namespace quant {

using json = nlohmann::json;

namespace {

json report_to_json(const TensorReport& r) {
  return {{"name", r.name}, {"quantized", r.quantized}, {"note", r.note}, {"bits", r.spec.bits}, {"group_size", r.spec.group_size},
          {"sym", r.spec.sym}, {"mse", r.spec.mse}, {"n_params", r.n_params}, {"sq_error", r.sq_error}, {"rel_error", r.rel_error},
          {"bpw", r.bpw}, {"extra", r.extra}};
}

TensorReport report_from_json(const json& j) {
  TensorReport r;
  r.name = j.at("name");
  r.quantized = j.at("quantized");
  r.note = j.at("note");
  r.spec.bits = j.at("bits");
  r.spec.group_size = j.at("group_size");
  r.spec.sym = j.at("sym");
  r.spec.mse = j.at("mse");
  r.n_params = j.at("n_params");
  r.sq_error = j.at("sq_error");
  r.rel_error = j.at("rel_error");
  r.bpw = j.at("bpw");
  r.extra = j.at("extra");
  return r;
}

// Writes `dir` through `dir.tmp` and a rename.
void write_dir(const fs::path& dir, const std::function<void(const fs::path&)>& fill) {
  const fs::path tmp = dir.string() + ".tmp";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) fail<IoError>("{}: cannot create directory: {}", tmp.string(), ec.message());
  fill(tmp);
  sync_path(tmp);
  fs::remove_all(dir, ec);
  fs::rename(tmp, dir, ec);
  if (ec) fail<IoError>("{}: cannot rename into place: {}", dir.string(), ec.message());
  sync_path(dir.parent_path());
}

// SHA-256 of every file in `dir`, keyed "<dirname>/<file>".
void hash_files(const fs::path& dir, json& into) {
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_regular_file()) into[dir.filename().string() + "/" + e.path().filename().string()] = sha256_file(e.path());
  }
}

// The reason the journal's files do not match their recorded hashes, or "" when they all do.
std::string journal_damage(const fs::path& resume_dir, const json& state, int done) {
  const json files = state.value("files", json::object());
  if (!files.is_object() || files.empty()) return "state.json records no checksums";
  for (int l = 0; l < done; ++l) {
    const std::string f = fmt::format("layer-{}/journal.json", l);
    if (!files.contains(f)) return f + " has no recorded checksum";
  }
  if (done > 0 && !files.contains(fmt::format("hidden-{}/model.safetensors", done - 1))) {
    return fmt::format("hidden-{}/model.safetensors has no recorded checksum", done - 1);
  }
  for (const auto& [name, hash] : files.items()) {
    const fs::path p = resume_dir / name;
    if (!fs::is_regular_file(p)) return name + " is missing";
    if (!hash.is_string() || sha256_file(p) != hash.get<std::string>()) return name + " does not match its checksum";
  }
  return "";
}

}  // namespace

void OutputSession::enable_resume(const std::vector<std::vector<std::int32_t>>& samples) {
  std::uint64_t estimate = 0;
  for (const auto& s : samples) estimate += 2 * s.size() * static_cast<std::uint64_t>(source_.config().hidden_size) * 4;
  for (const auto& f : source_.store().files()) estimate += fs::file_size(f.path());
  if (options_.journal_limit > 0 && estimate > options_.journal_limit) {
    log::warn("the resume journal would take about {:.0f} MB (over --journal-limit {:.0f} MB): this run is not journaled and cannot be resumed",
              static_cast<double>(estimate) / 1e6, static_cast<double>(options_.journal_limit) / 1e6);
    return;
  }
  resume_dir_ = staged_->final_path().string() + ".resume";
  Sha256 model;
  model.update(read_text_file(source_.dir() / "config.json"));
  for (const auto& name : source_.store().names()) {
    const TensorInfo& t = source_.store().get(name);
    model.update(fmt::format("{}:{}:{}:{}:{};", name, dtype_name(t.dtype), fmt::join(t.shape, ","), t.offset, t.nbytes));
  }
  Sha256 calib;
  for (const auto& s : samples) {
    calib.update(s.data(), s.size() * sizeof(std::int32_t));
    calib.update("|");
  }
  Sha256 settings;
  json plan = json::array();
  for (const auto& p : plan_.linears) {
    plan.push_back({p.desc->prefix, p.quantize, p.spec.bits, p.spec.group_size, p.spec.sym, p.spec.mse});
  }
  settings.update(json{{"method", options_.method}, {"format", formats::format_name(plan_.format)},
                       {"method_config", options_.method_config}, {"extra", options_.fingerprint_extra},
                       {"shard", options_.max_shard_bytes}, {"plan", plan}}
                      .dump());
  fingerprint_ = {{"model", model.hex_digest()}, {"calibration", calib.hex_digest()}, {"settings", settings.hex_digest()}};
  writer_->on_add = [this](const std::string& name, DType dtype, const std::vector<std::int64_t>& shape, std::span<const std::byte> data) {
    pending_.push_back({name, dtype, shape, std::vector<std::byte>(data.begin(), data.end())});
  };
  if (!options_.resume) {
    std::error_code ec;
    fs::remove_all(resume_dir_, ec);
  }
}

int OutputSession::resume(std::vector<Mat>& hidden) {
  if (resume_dir_.empty() || !fs::exists(resume_dir_ / "state.json")) return 0;
  json state;
  try {
    state = read_json_file(resume_dir_ / "state.json");
  } catch (const InputError& e) {
    fail<InputError>("unreadable resume state ({}); delete {} or pass --no-resume", e.what(), resume_dir_.string());
  }
  if (!state.is_object()) fail<InputError>("{}: not a resume state; delete {} or pass --no-resume", (resume_dir_ / "state.json").string(), resume_dir_.string());
  for (const char* part : {"model", "calibration", "settings"}) {
    if (state.value("fingerprint", json::object()).value(part, "") != fingerprint_[part].get<std::string>()) {
      fail<UsageError>("{}: an interrupted run with a different {} left this resume state; run the same command to resume, or pass --no-resume to start afresh",
                       resume_dir_.string(), part);
    }
  }
  const int done = state.value("layers_done", 0);
  files_ = state.value("files", json::object());
  if (const std::string damage = journal_damage(resume_dir_, state, done); !damage.empty()) {
    log::warn("resume journal {}: {}; not trusting it — recomputing every layer", resume_dir_.string(), damage);
    std::error_code ec;
    fs::remove_all(resume_dir_, ec);
    files_ = json::object();
    return 0;
  }
  pending_.clear();
  for (int l = 0; l < done; ++l) {
    const fs::path dir = resume_dir_ / fmt::format("layer-{}", l);
    const json journal = read_json_file(dir / "journal.json");
    if (!journal.at("order").empty()) {
      const TensorStore store = TensorStore::open(dir);
      for (const auto& n : journal.at("order")) {
        const TensorInfo& t = store.get(n.get<std::string>());
        writer_->add(t.name, t.dtype, t.shape, store.bytes(t.name));
        written_.insert(t.name);
      }
    }
    for (const auto& r : journal.at("reports")) reports_.push_back(report_from_json(r));
    for (const auto& n : journal.at("written")) written_.insert(n.get<std::string>());
  }
  pending_.clear();
  reports_journaled_ = reports_.size();
  if (done > 0) {
    const TensorStore h = TensorStore::open(resume_dir_ / fmt::format("hidden-{}", done - 1));
    hidden.clear();
    for (std::size_t i = 0;; ++i) {
      const std::string name = fmt::format("h.{}", i);
      if (!h.contains(name)) break;
      const TensorInfo& t = h.get(name);
      const std::vector<float> v = h.read_f32(name);
      hidden.push_back(Eigen::Map<const Mat>(v.data(), t.shape[0], t.shape[1]));
    }
    log::info("resuming {} after layer {} (journal {})", staged_->final_path().string(), done - 1, resume_dir_.string());
  }
  return done;
}

void OutputSession::checkpoint(int layer, const std::vector<Mat>& hidden) {
  if (resume_dir_.empty()) return;
  std::error_code ec;
  fs::create_directories(resume_dir_, ec);
  if (ec) fail<IoError>("{}: cannot create directory: {}", resume_dir_.string(), ec.message());
  write_dir(resume_dir_ / fmt::format("layer-{}", layer), [&](const fs::path& dir) {
    json order = json::array(), reports = json::array();
    if (!pending_.empty()) {
      SafetensorsWriter w(dir);
      for (const auto& p : pending_) {
        w.add(p.name, p.dtype, p.shape, p.data);
        order.push_back(p.name);
      }
      w.finish();
    }
    for (std::size_t i = reports_journaled_; i < reports_.size(); ++i) reports.push_back(report_to_json(reports_[i]));
    // written_: source tensors already accounted for (a quantized linear's .weight included).
    write_file_atomic(dir / "journal.json", json{{"order", order}, {"reports", reports}, {"written", written_}}.dump());
  });
  hash_files(resume_dir_ / fmt::format("layer-{}", layer), files_);
  write_dir(resume_dir_ / fmt::format("hidden-{}", layer), [&](const fs::path& dir) {
    SafetensorsWriter w(dir);
    for (std::size_t i = 0; i < hidden.size(); ++i) {
      w.add_f32(fmt::format("h.{}", i), DType::F32, {hidden[i].rows(), hidden[i].cols()},
                std::span<const float>(hidden[i].data(), static_cast<std::size_t>(hidden[i].size())));
    }
    w.finish();
  });
  const std::string previous_hidden = fmt::format("hidden-{}/", layer - 1);
  for (auto it = files_.begin(); it != files_.end();) {
    if (it.key().rfind(previous_hidden, 0) == 0) it = files_.erase(it);
    else ++it;
  }
  hash_files(resume_dir_ / fmt::format("hidden-{}", layer), files_);
  write_file_atomic(resume_dir_ / "state.json", json{{"fingerprint", fingerprint_}, {"layers_done", layer + 1}, {"files", files_}}.dump(2));
  if (layer > 0) fs::remove_all(resume_dir_ / fmt::format("hidden-{}", layer - 1), ec);
  pending_.clear();
  reports_journaled_ = reports_.size();
  // Fault injection for the kill-and-resume tests: die as `kill -9` would, right here.
  if (const char* k = std::getenv("QUANT_FAULT_KILL_AFTER_LAYER"); k && std::atoi(k) == layer) std::raise(SIGKILL);
  // And for the scheduler tests (a job cancelled mid-run, then requeued): with
  // QUANT_FAULT_STALL_AFTER_LAYER=N[:TEXT], wait here after layer N (of a journal whose path
  // contains TEXT) until a signal arrives.
  if (const char* k = std::getenv("QUANT_FAULT_STALL_AFTER_LAYER");
      k && std::atoi(k) == layer && (!std::strchr(k, ':') || resume_dir_.string().find(std::strchr(k, ':') + 1) != std::string::npos)) {
    while (!interrupt_requested()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    check_interrupted();
  }
}

}  // namespace quant
