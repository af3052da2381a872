// Links the engine library with nothing else: the build fails if the engine needs libvirt or
// gRPC symbols. tests/CMake runs this binary and checks its dynamic dependencies.
#include "daemon/engine/site.h"

int main() { return tprd::engine::FormName(tprd::engine::Form::kPushMem).empty() ? 1 : 0; }
