//! `metahook-operator`: runs the controller against the cluster of the current kubeconfig
//! (in-cluster service account, or KUBECONFIG / ~/.kube/config for a local process).
fn main() -> std::process::ExitCode {
    metahook_operator::operator::main()
}
