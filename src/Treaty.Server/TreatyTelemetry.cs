using System.Diagnostics;
using System.Diagnostics.Metrics;
using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Server;

/// <summary>
/// The ActivitySource and Meter named <c>Treaty</c>, fed by the engine's observer hooks. Every span
/// of one transaction is in one trace whose id derives from the gid (<see cref="HttpBranchInvoker.TraceOf"/>),
/// so retries, compensations, decisions and calls made after a coordinator restart line up in one
/// trace; the submit span links to the caller's trace. Names, units and tags: docs/observability.md.
/// </summary>
internal sealed class TreatyTelemetry : IEngineObserver, IDisposable
{
    public const string Name = "Treaty";

    public static readonly ActivitySource Source = new(Name);

    private readonly Meter _meter;
    private readonly Counter<long> _submitted;
    private readonly Counter<long> _finished;
    private readonly Counter<long> _calls;
    private readonly Counter<long> _retries;
    private readonly Histogram<double> _callDuration;
    private readonly Counter<long> _alerts;
    private readonly Counter<long> _writes;
    private readonly Counter<long> _decisions;
    private readonly Counter<long> _purged;
    private readonly Counter<long> _resumed;
    private readonly Counter<long> _leasesLost;
    private readonly Counter<long> _renewFailures;
    private TransactionEngine? _engine;

    public TreatyTelemetry(IMeterFactory meters)
    {
        _meter = meters.Create(Name);
        _submitted = _meter.CreateCounter<long>("treaty.transactions.submitted", unit: "{transaction}", description: "Transactions accepted");
        _finished = _meter.CreateCounter<long>("treaty.transactions.finished", unit: "{transaction}", description: "Transactions by protocol and outcome");
        _calls = _meter.CreateCounter<long>("treaty.branch.calls", unit: "{call}", description: "Branch calls by op and outcome (retries included)");
        _retries = _meter.CreateCounter<long>("treaty.branch.retries", unit: "{call}", description: "Branch calls that repeated an earlier attempt of the same operation");
        _callDuration = _meter.CreateHistogram<double>("treaty.branch.duration", unit: "ms", description: "Branch call latency");
        _alerts = _meter.CreateCounter<long>("treaty.transactions.stuck", unit: "{transaction}", description: "Transactions that became stuck");
        _writes = _meter.CreateCounter<long>("treaty.store.writes", unit: "{write}",
            description: "Durable state writes by protocol; forced = the decision's calls waited for the write (write-ahead)");
        _decisions = _meter.CreateCounter<long>("treaty.decisions", unit: "{decision}", description: "Coordinator decisions (commit or abort) by protocol");
        _purged = _meter.CreateCounter<long>("treaty.transactions.purged", unit: "{transaction}",
            description: "Finished transactions deleted by retention, with their journal");
        _resumed = _meter.CreateCounter<long>("treaty.transactions.resumed", unit: "{transaction}",
            description: "Transactions this coordinator took over from the store: recovery, or an operator's take-over (takeover=true)");
        _leasesLost = _meter.CreateCounter<long>("treaty.leases.lost", unit: "{transaction}",
            description: "Transactions this coordinator stopped driving because another instance holds them now, found at a renewal or by a fenced write");
        _renewFailures = _meter.CreateCounter<long>("treaty.leases.renewal_failures", unit: "{renewal}",
            description: "Lease renewals that failed (the store did not answer); the leases run on until they expire");
        _meter.CreateObservableGauge("treaty.transactions.in_flight", () => _engine?.ActiveCount ?? 0, unit: "{transaction}",
            description: "Transactions this coordinator drives now (not terminal, held in memory)");
        _meter.CreateObservableGauge("treaty.transactions.stuck.current", () => _engine?.StuckCount ?? 0, unit: "{transaction}",
            description: "Transactions this coordinator holds that wait for an operator");
    }

    /// <summary>The engine whose in-flight and stuck counts the gauges report.</summary>
    public void Track(TransactionEngine engine) => _engine = engine;

    /// <summary>
    /// The server span of a submit, in the transaction's trace, linked to the caller's trace
    /// (<paramref name="caller"/>: the request's activity or its <c>traceparent</c>) when it has one.
    /// </summary>
    public static Activity? StartSubmit(TransactionSpec spec, ActivityContext caller)
    {
        if (!Source.HasListeners())
        {
            return null;
        }

        ActivityLink[]? links = caller == default ? null : [new ActivityLink(caller)];
        var activity = Source.StartActivity("treaty.submit", ActivityKind.Server, HttpBranchInvoker.TraceOf(spec.Gid), links: links);
        activity?.SetTag("treaty.gid", spec.Gid);
        activity?.SetTag("treaty.protocol", spec.Protocol.ToWire());
        activity?.SetTag("treaty.branches", spec.Branches.Length);
        return activity;
    }

    /// <summary>Retention deleted <paramref name="count"/> finished transactions.</summary>
    public void Purged(int count)
    {
        if (count > 0)
        {
            _purged.Add(count);
        }
    }

    public void Submitted(TransactionState state)
    {
        var protocol = new KeyValuePair<string, object?>("protocol", state.Spec.Protocol.ToWire());
        _submitted.Add(1, protocol);
        _writes.Add(1, protocol, new KeyValuePair<string, object?>("forced", true));
    }

    public void Persisted(TransactionState state, bool forced) =>
        _writes.Add(1, new KeyValuePair<string, object?>("protocol", state.Spec.Protocol.ToWire()), new KeyValuePair<string, object?>("forced", forced));

    public void BranchCalled(TransactionState state, BranchCall call, BranchOutcome outcome, TimeSpan duration)
    {
        var tags = new TagList
        {
            { "protocol", state.Spec.Protocol.ToWire() }, { "op", call.Op }, { "outcome", outcome.Kind.ToString() }, { "retry", call.Attempt > 1 },
        };
        _calls.Add(1, tags);
        _callDuration.Record(duration.TotalMilliseconds, tags);
        if (call.Attempt > 1)
        {
            _retries.Add(1, new TagList { { "protocol", state.Spec.Protocol.ToWire() }, { "op", call.Op } });
        }
    }

    public void Finished(TransactionState state) =>
        _finished.Add(1, new TagList { { "protocol", state.Spec.Protocol.ToWire() }, { "outcome", state.Status.ToWire() } });

    public void Alert(TransactionState state, Alert alert) =>
        _alerts.Add(1, new KeyValuePair<string, object?>("protocol", state.Spec.Protocol.ToWire()));

    public void Decided(TransactionState previous, TransactionState next)
    {
        if (previous.Outcome is null && next.Outcome is { } outcome)
        {
            _decisions.Add(1, new TagList { { "protocol", next.Spec.Protocol.ToWire() }, { "outcome", outcome.ToWire() } });
            // A decision is an instant: a span of (almost) no length, in the transaction's trace.
            // Its name and trace id (a SHA-256) are made only when someone listens.
            using var decision = !Source.HasListeners() ? null : Source.StartActivity("treaty.decision " + outcome.ToWire(), ActivityKind.Internal, HttpBranchInvoker.TraceOf(next.Gid));
            if (decision is not null)
            {
                Tag(decision, next);
                decision.SetTag("treaty.outcome", outcome.ToWire());
                decision.SetTag("treaty.phase", next.Phase);
                if (next.Reason is { } reason)
                {
                    decision.SetTag("treaty.reason", reason);
                }
            }
        }

        if (previous.Status != TransactionStatus.Aborting && next.Status == TransactionStatus.Aborting)
        {
            // The compensating calls follow as treaty.branch spans of their own; this marks where they begin.
            using var compensation = !Source.HasListeners() ? null : Source.StartActivity("treaty.compensation", ActivityKind.Internal, HttpBranchInvoker.TraceOf(next.Gid));
            if (compensation is not null)
            {
                Tag(compensation, next);
                if (next.Reason is { } reason)
                {
                    compensation.SetTag("treaty.reason", reason);
                }

                compensation.AddEvent(new ActivityEvent("treaty.compensation.start"));
            }
        }
    }

    public void Resumed(TransactionState state, long epoch, bool takeOver) =>
        _resumed.Add(1, new TagList { { "protocol", state.Spec.Protocol.ToWire() }, { "takeover", takeOver } });

    public void LeaseLost(string gid, long epoch, bool atRenewal) =>
        _leasesLost.Add(1, new KeyValuePair<string, object?>("found", atRenewal ? "renewal" : "write"));

    public void RenewFailed(int held) => _renewFailures.Add(1);

    /// <summary>The Meter of this coordinator (tests tell coordinators in one process apart by it).</summary>
    internal Meter Meter => _meter;

    private static void Tag(Activity activity, TransactionState state)
    {
        activity.SetTag("treaty.gid", state.Gid);
        activity.SetTag("treaty.protocol", state.Spec.Protocol.ToWire());
    }

    public void Dispose() => _meter.Dispose();
}
