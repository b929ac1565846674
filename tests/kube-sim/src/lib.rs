//! # kube-sim
//!
//! A Kubernetes API server stand-in for kedge's tests. It serves real HTTP so
//! `kube::Client` runs unchanged, and it follows `shared/K8S_FIDELITY.md`: it
//! must never be kinder than kube-apiserver.
//!
//! # Layout
//! - [`sim`]: the running server ([`KubeSim`]), its config and fault hooks.
//! - [`api`]: HTTP paths and verbs → store operations; list and watch.
//! - [`discovery`]: `/version`, `/api`, `/apis` and the resource lists.
//! - [`store`]: objects, the global resourceVersion counter, event history.
//! - [`validation`]: name rules, defaults and validation (registry strategies).
//! - [`selector`]: label and field selectors.
//! - [`patch`]: merge patch and JSON patch.
//! - [`status`]: `ApiError` and the `Status` wire form.
//! - [`gc`]: the garbage collector (orphan / foreground / dangling owners).
//! - [`job_controller`]: the Job controller, kubelet and TTL controller;
//!   outcome scripts (`kube-sim/outcome`) and the time scale.
//! - [`pod_start`]: pods that never start (refused, image errors).
//! - [`kubelet`]: the process kubelet ([`Kubelet::Processes`]): pods run
//!   their containers as local processes, with logs per Job.
//! - [`resource`]: the resources served.
//!
//! # K8S_FIDELITY checklist
//! Done (proved by the named test; `tests/` drive a real `kube::Client` over HTTP):
//! - [x] kube-rs query strings (`?&watch=true`), bare `?` — every test in `tests/jobs.rs`.
//! - [x] DELETE with a JSON DeleteOptions body: `propagationPolicy`,
//!   `preconditions`, `dryRun` — `tests/jobs.rs::delete_*`.
//! - [x] PATCH: merge-patch (`tests/jobs.rs::merge_patch_and_template_immutability`),
//!   json-patch (`patch.rs::tests::json_patch_ops`; served, not yet driven
//!   through kube-rs, which needs its `jsonpatch` feature).
//! - [x] Every 4xx body is a `Status` with `reason`, `details`, `code` —
//!   `tests/jobs.rs::not_found_*`, `already_exists_*`, `stale_*`, `invalid_*`.
//! - [x] Exact `apiVersion`/`kind`; lists with `metadata.resourceVersion`,
//!   items without kind — `tests/jobs.rs::list_*`.
//! - [x] POST → 201 with `uid`, `creationTimestamp`, `resourceVersion` (one
//!   global counter), `generation: 1`; client `status` dropped —
//!   `tests/jobs.rs::create_fills_server_metadata`.
//! - [x] `generateName` (58 + 5) — `tests/jobs.rs::generate_name_*`, `validation.rs`.
//! - [x] DNS-1123 names; Job name over 63 → 422 (label value) — `tests/jobs.rs::invalid_*`.
//! - [x] List `limit`/`continue` pages share one snapshot; expired continue → 410 —
//!   `tests/jobs.rs::list_pages_share_a_snapshot`.
//! - [x] Label selectors `=`, `==`, `!=`, `in`, `notin`, exists, `!k`; field
//!   selectors on Jobs (`metadata.name`, `metadata.namespace`,
//!   `status.successful`, others 400); applied to watch too —
//!   `tests/jobs.rs::list_*selector*`, `tests/watch.rs::selector_*`, `selector.rs`.
//! - [x] Error table: NotFound, AlreadyExists, Conflict, Invalid (Kind +
//!   causes), Expired; core group without `group` — `tests/jobs.rs`, `tests/watch.rs`.
//! - [x] PUT with an old resourceVersion → 409; status only via `/status`;
//!   Job `spec.template` immutable (422); `spec.parallelism` mutable; generation
//!   bumps on spec change — `tests/jobs.rs::stale_*`, `status_*`, `template_*`.
//! - [x] DELETE Background (gone at once, Success Status, dependents
//!   collected), Foreground (deletionTimestamp + finalizer, dependents first,
//!   DELETED last), Job default Orphan; preconditions → 409; dangling owner →
//!   collected — `tests/jobs.rs::delete_*`.
//! - [x] Watch: 200 chunked JSON lines; from rv: later events in order; unset
//!   or "0": ADDED for current first; selector enter/leave → ADDED/DELETED;
//!   BOOKMARK with kind/apiVersion/resourceVersion; too old → 200 + ERROR 410
//!   then close; `timeoutSeconds`; fault hooks expire history, cut streams,
//!   fail next N with a code, hang — `tests/watch.rs`, `tests/faults.rs`.
//! - [x] Job controller (`tests/job_controller.rs`; tests that count every
//!   event use `SimConfig::job_controller: false`, a bare API server): pods
//!   with a controller ownerReference (`blockOwnerDeletion`), the template's
//!   labels, up to `parallelism` —
//!   `success_sets_interim_condition_first_then_complete`,
//!   `parallelism_bounds_active_pods`; Pending → Running → Succeeded/Failed
//!   with container statuses; failed (or deleted) pods replaced after a 10 s
//!   doubling backoff within `backoffLimit` —
//!   `failed_pods_are_replaced_within_backoff_limit`,
//!   `a_deleted_running_pod_counts_as_failed_and_is_replaced`; status
//!   `active`/`ready`/`succeeded`/`failed`/`startTime`/`completionTime`;
//!   `SuccessCriteriaMet` then `Complete` (`CompletionsReached`),
//!   `FailureTarget` then `Failed` (`BackoffLimitExceeded`,
//!   `DeadlineExceeded`, `FailedIndexes`, `MaxFailedIndexesExceeded`), the
//!   terminal one 1 simulated second later with every pod stopped —
//!   `over_backoff_limit_is_failure_target_then_failed`,
//!   `active_deadline_fails_with_deadline_exceeded`; Indexed: index
//!   annotation + label, `JOB_COMPLETION_INDEX`, `completedIndexes` compressed,
//!   `backoffLimitPerIndex` → `failedIndexes`, `maxFailedIndexes` —
//!   `indexed_*`, `backoff_limit_per_index_*`, `max_failed_indexes_*`;
//!   `ttlSecondsAfterFinished` → Foreground delete with a uid check, pods
//!   collected — `ttl_after_finished_deletes_the_job_and_its_pods`;
//!   unschedulable pods Pending with `PodScheduled=False` —
//!   `unschedulable_pods_stay_pending`; outcomes scripted by the
//!   `kube-sim/outcome` annotation on the pod template or the Job (`succeed`,
//!   `fail`, `fail-times=N`, `fail-indexes=…`, `hang`, `duration=D`,
//!   `unschedulable`) — `hanging_pods_run_and_are_ready`,
//!   `job_controller::tests`; `SimConfig::time_scale` / `--time-scale` —
//!   `time_scale_stretches_every_delay`.
//! - [x] Runs that never start ([`pod_start`]): the scheduler's message on
//!   unschedulable pods, pods that schedule later (`unschedulable=5s`) —
//!   `unschedulable_pods_carry_the_schedulers_message`,
//!   `pods_unschedulable_for_a_while_then_schedule_and_run`; refused pods
//!   → no pods, a `FailedCreate` Warning Event series on the Job, the
//!   controller's 1 s → 60 s backoff —
//!   `refused_pods_leave_failed_create_events_and_back_off`;
//!   `ErrImagePull` → `ImagePullBackOff`, `InvalidImageName`,
//!   `CreateContainerConfigError` container waiting states —
//!   `image_pull_errors_back_off_and_never_finish`,
//!   `invalid_images_and_missing_secrets_wait_with_their_reason`. Event
//!   field selectors (`involvedObject.*`, `reason`, `source`, `type`, …)
//!   as core/v1 converts them; others 400.
//! - [x] Lease: `renewTime`/`acquireTime` MicroTime keep microseconds —
//!   `tests/leases.rs::create_get_replace_keep_microseconds`; stale
//!   resourceVersion → 409 Conflict on `leases.coordination.k8s.io` —
//!   `replace_with_a_stale_resource_version_is_a_conflict`; two concurrent
//!   replacers, exactly one wins — `of_two_concurrent_replacers_exactly_one_wins`;
//!   no unconditional update (PUT without resourceVersion → 422 naming the
//!   resource) — `replace_without_a_resource_version_is_refused_for_leases`;
//!   create on update — `replace_of_a_missing_lease_creates_it`;
//!   `leaseDurationSeconds > 0`, `leaseTransitions >= 0` —
//!   `validation.rs::tests::lease_spec_bounds`. Per resource
//!   `AllowCreateOnUpdate` / `AllowUnconditionalUpdate` (Events create on
//!   update too); a PUT body without a name is refused as `checkName` does.
//! - [x] ConfigMaps and core/v1 Events served: create/get/list/replace/delete,
//!   errors without a group (`configmaps "x" not found`) —
//!   `tests/core.rs::configmaps_create_get_list_replace_delete`,
//!   `events_create_get_list_delete`; ConfigMap keys and the 1 MiB bound —
//!   `configmap_keys_and_size_are_validated`; Event namespace agreement and
//!   the fields a "new" Event (with `eventTime`) needs (`legacyValidateEvent`).
//! - [x] events.k8s.io/v1 Events: the same storage as core Events, converted
//!   per request version (`regarding`/`note`/`reportingController`/
//!   `deprecated*`), its own field labels, the strict create checks and
//!   series-only updates; kube-runtime's Recorder creates and patches a
//!   series — `events_v1.rs`,
//!   `tests/core.rs::events_k8s_io_v1_share_storage_with_core_events_and_are_validated_strictly`.
//! - [x] A ConfigMap owned by a Job (controller, blockOwnerDeletion, uid):
//!   collected on Background, kept without the reference on Orphan —
//!   `tests/core.rs::a_configmap_owned_by_a_job_follows_the_deletion_policy`;
//!   collected when the owner uid does not exist or lives in another
//!   namespace — `a_configmap_whose_owner_uid_does_not_exist_is_collected`.
//! - [x] Discovery: `/version`, `/api`, `/apis`, `/apis/GROUP`, `/api/v1`,
//!   `/apis/batch/v1`, `/apis/coordination.k8s.io/v1` (APIVersions,
//!   APIGroupList, APIResourceList with verbs, shortNames, categories,
//!   namespaced, kind, singularName, `/status` subresources) —
//!   `discovery.rs::tests::groups_and_resource_lists`; the real kubectl
//!   (1.20 from Debian and 1.32 both checked) runs `create -f`
//!   (`--validate=false`: no OpenAPI documents), `get jobs` (plain objects,
//!   kubectl falls back from Table), `get jobs -w`, `delete job` —
//!   `tests/kubectl.rs::kubectl_creates_gets_watches_and_deletes_a_job`.
//! - [x] Watch faults: cut every open stream mid-event (half a line, then a
//!   broken connection without the closing chunk) —
//!   `tests/faults.rs::cut_mid_event_sends_half_a_line_then_breaks_the_connection`,
//!   `cut_mid_event_is_an_error_for_kube_rs_and_later_streams_are_whole`;
//!   drop the next N event lines — `dropped_events_are_never_sent_and_the_stream_goes_on`;
//!   delay every event line — `delayed_events_arrive_no_sooner_than_the_delay`.
//! - [x] Process kubelet (`SimConfig::kubelet: Kubelet::Processes { root }`,
//!   opt-in; scripted stays the default and unchanged): pods run their
//!   containers as local processes — `command`+`args` and env values with
//!   `$(VAR)` expansion and `$$` escaping, `fieldRef`/`configMapKeyRef`
//!   (so `JOB_COMPLETION_INDEX`, now injected into init containers too),
//!   `HOSTNAME` = pod name, nothing of the host's env but `PATH`/`HOME`;
//!   exit code → terminated state → `Succeeded`/`Failed`, `StartError` for a
//!   command that cannot start —
//!   `tests/processes.rs::a_pod_runs_its_command_and_its_exit_code_decides_the_phase`,
//!   `command_args_and_env_expand_as_kubernetes_does`; init containers in
//!   order, a failing one stops the pod —
//!   `init_containers_run_in_order_and_indexes_reach_every_container`;
//!   a missing ConfigMap keeps the pod Pending (`ContainerCreating`) until it
//!   exists, ConfigMap volumes materialised under the pod's folder with env
//!   paths rewritten (the documented liberty, see [`kubelet`]) —
//!   `a_missing_config_map_keeps_the_pod_pending_until_it_exists`; a deleted
//!   pod gets SIGTERM to each container's process group, SIGKILL after
//!   `terminationGracePeriodSeconds` —
//!   `a_deleted_pod_gets_sigterm_then_sigkill_after_its_grace_period`;
//!   `activeDeadlineSeconds` on the wall clock, the terminal condition only
//!   once every pod's processes stopped (`status.terminating` counts them) —
//!   `active_deadline_is_wall_clock_and_the_job_fails_after_its_pods_stopped`;
//!   logs per Job ([`KubeSim::job_logs`]); every process killed when the
//!   stand-in is dropped. The executor conformance suite runs on it
//!   (`tests/executor_conformance.rs`, module `kubernetes`).
//! - [x] Scale: 2,000 Jobs created through the API, Job controller and
//!   garbage collector on, all Complete within 40 s (no pass costs
//!   O(jobs × pods) or copies every object) —
//!   `tests/scale.rs::two_thousand_jobs_complete_within_the_deadline`.
//!
//! Test aids beyond the server (for other crates' tests):
//! - [x] Create log: every POST to a namespaced resource with its outcome
//!   code, resourceVersion, uid, time, and annotations/labels as sent
//!   ([`KubeSim::creates`], [`CreateRecord`]) —
//!   `tests/creates.rs::every_create_request_is_recorded_with_its_outcome`.
//! - [x] Current objects as JSON ([`KubeSim::objects`], [`KubeSim::object`])
//!   and how many there are ([`KubeSim::count`]) —
//!   `tests/creates.rs::objects_and_object_read_the_store`.
//!
//! Not yet:
//! - [ ] strategic-merge-patch with list merge keys (applied as merge patch)
//!   and apply-patch (`fieldManager`, `force`) — answered 415.
//! - [ ] DELETE of a collection; `resourceVersionMatch`; `sendInitialEvents`.
//! - [ ] Job controller leftovers: `suspend` (no `Suspended` condition, a
//!   suspended Job is left alone), scale-down of active pods when
//!   `parallelism` drops, `podFailurePolicy`, `successPolicy`, the
//!   `batch.kubernetes.io/job-tracking` pod finalizer, per-index backoff
//!   delays (one delay per Job), `restartPolicy: OnFailure` restarts in place,
//!   graceful pod termination (`terminating` is always 0 in scripted mode;
//!   the process kubelet counts pods still stopping their processes).
//! - [ ] Process kubelet leftovers: pods keep no `deletionTimestamp` phase
//!   (removed from the API at once, processes stop afterwards); no probes,
//!   `secretKeyRef`/`envFrom`, volumes other than ConfigMap and emptyDir,
//!   `subPath`; pods created directly through the API are not run.
//! - [ ] Pod lifecycle and graceful deletion; Event TTL (1 h) and the
//!   length limits of Event fields; `immutable` ConfigMaps.
//! - [ ] Aggregated discovery (`apidiscovery.k8s.io/v2`), Table output
//!   (`as=Table`), `/openapi/v2` and `/openapi/v3` (hence no server-side
//!   `fieldValidation=Strict`: unknown fields are dropped silently).
//! - [ ] `preconditions`/finalizers rule "no new finalizers while deleting".

pub mod api;
pub mod discovery;
pub mod events_v1;
pub mod gc;
pub mod job_controller;
pub mod kubelet;
pub mod patch;
pub mod pod_start;
pub mod resource;
pub mod selector;
pub mod sim;
pub mod status;
pub mod store;
pub mod validation;

pub use kubelet::ContainerLog;
pub use sim::{CreateRecord, KubeSim, Kubelet, SimConfig};
pub use status::ApiError;
