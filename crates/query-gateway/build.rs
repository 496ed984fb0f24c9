//! Compiles the gRPC service of `proto/wick/v1/candle_service.proto` with the vendored `protoc`
//! (see `wick-wire`'s build script). The messages it shares with the broker records come from `wick-wire`; the
//! descriptor set (with its imports) is embedded for gRPC reflection.

fn main() {
    let proto = "../../proto/wick/v1/candle_service.proto";
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-changed=../../proto/wick/v1/market.proto");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    let protoc = match protoc_bin_vendored::protoc_bin_path() {
        Ok(path) => path,
        Err(e) => panic!("no vendored protoc for this platform: {e}"),
    };
    // tonic-prost-build reads `PROTOC` only; the build script's own environment is private to it.
    std::env::set_var("PROTOC", protoc);
    let result = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .file_descriptor_set_path(out.join("wick_descriptor.bin"))
        .extern_path(".wick.v1.Candle", "::wick_wire::pb::Candle")
        .extern_path(".wick.v1.CandleEvent", "::wick_wire::pb::CandleEvent")
        .extern_path(".wick.v1.CandleEventKind", "::wick_wire::pb::CandleEventKind")
        .extern_path(".wick.v1.Decimal", "::wick_wire::pb::Decimal")
        .extern_path(".wick.v1.TakerSide", "::wick_wire::pb::TakerSide")
        .extern_path(".wick.v1.Trade", "::wick_wire::pb::Trade")
        .extern_path(".wick.v1.TradeBatch", "::wick_wire::pb::TradeBatch")
        .extern_path(".wick.v1.CandleBatch", "::wick_wire::pb::CandleBatch")
        .compile_protos(&[proto], &["../../proto"]);
    if let Err(e) = result {
        panic!("compiling {proto}: {e}");
    }
}
