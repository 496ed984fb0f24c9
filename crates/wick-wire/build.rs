//! Compiles `proto/wick/v1/*.proto` with prost (needs `protoc`: Debian's `protobuf-compiler`).

fn main() {
    let protos = ["../../proto/wick/v1/market.proto", "../../proto/wick/v1/aggregator.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    if let Err(e) = prost_build::compile_protos(&protos, &["../../proto"]) {
        panic!("compiling {protos:?}: {e} (install protoc: `apt-get install protobuf-compiler`)");
    }
}
