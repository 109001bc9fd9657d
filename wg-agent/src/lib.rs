//! wg-agent: the node agent of wg-netns's Kubernetes-managed mode.
