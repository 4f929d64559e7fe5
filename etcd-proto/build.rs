//! Compiles the hand-written etcd v3 `.proto` files with a vendored protoc (no system protoc).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts run single-threaded, so setting the variable here races nothing.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // A key-value's key and value are `Bytes`: a watch event goes to every watcher of its
        // key, and copying it per watcher is a reference count, not two allocations.
        .bytes(".mvccpb.KeyValue.key")
        .bytes(".mvccpb.KeyValue.value")
        // A put's key and value too: the request is cloned into its Raft entry and read back
        // from the log's cache to be applied, and each clone is then a reference count.
        .bytes(".etcdserverpb.PutRequest.key")
        .bytes(".etcdserverpb.PutRequest.value")
        .compile_protos(
            &[
                "proto/rpc.proto",
                "proto/kv.proto",
                "proto/auth.proto",
                "proto/cairn_raft.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
