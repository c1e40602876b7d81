"""Workload identity for the mesh: SPIFFE ids, the control plane's CA, certificate requests.

Identities are Istio's, ``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``
(:mod:`.spiffe`). The control plane is the CA (:mod:`.ca`): it creates a root on first start
or loads an operator's, and signs short-lived workload certificates for CSRs whose key never
leaves the proxy (:mod:`.csr`), over the API Istio's agents use (:mod:`.cert_service`,
``istio.v1.auth.IstioCertificateService/CreateCertificate``). This package imports neither the
control plane nor the runtime; both use it.
"""
