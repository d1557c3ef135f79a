#include "commands.h"
namespace quant::cli {
void register_eval(CLI::App&) {}
void register_rtn(CLI::App&) {}
}
