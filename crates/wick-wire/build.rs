//! Compiles `proto/wick/v1/*.proto` with prost, using the `protoc` vendored by `protoc-bin-vendored`
//! (a fresh machine has none, and a `PROTOC` that points elsewhere is ignored so every build uses
//! the same compiler).

fn main() {
    let protos = ["../../proto/wick/v1/market.proto", "../../proto/wick/v1/aggregator.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let protoc = match protoc_bin_vendored::protoc_bin_path() {
        Ok(path) => path,
        Err(e) => panic!("no vendored protoc for this platform: {e}"),
    };
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    if let Err(e) = config.compile_protos(&protos, &["../../proto"]) {
        panic!("compiling {protos:?}: {e}");
    }
}
