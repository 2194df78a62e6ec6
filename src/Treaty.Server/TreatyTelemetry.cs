using System.Diagnostics;
using System.Diagnostics.Metrics;
using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Server;

/// <summary>The ActivitySource and Meter named <c>Treaty</c>, fed by the engine's observer hooks.</summary>
internal sealed class TreatyTelemetry : IEngineObserver, IDisposable
{
    public const string Name = "Treaty";

    public static readonly ActivitySource Source = new(Name);

    private readonly Meter _meter;
    private readonly Counter<long> _submitted;
    private readonly Counter<long> _finished;
    private readonly Counter<long> _calls;
    private readonly Histogram<double> _callDuration;
    private readonly Counter<long> _alerts;
    private readonly Counter<long> _writes;

    public TreatyTelemetry(IMeterFactory meters)
    {
        _meter = meters.Create(Name);
        _submitted = _meter.CreateCounter<long>("treaty.transactions.submitted", description: "Transactions accepted");
        _finished = _meter.CreateCounter<long>("treaty.transactions.finished", description: "Transactions by protocol and outcome");
        _calls = _meter.CreateCounter<long>("treaty.branch.calls", description: "Branch calls by op and outcome (retries included)");
        _callDuration = _meter.CreateHistogram<double>("treaty.branch.duration", unit: "ms", description: "Branch call latency");
        _alerts = _meter.CreateCounter<long>("treaty.transactions.stuck", description: "Transactions that became stuck");
        _writes = _meter.CreateCounter<long>("treaty.store.writes",
            description: "Durable state writes by protocol; forced = the decision's calls waited for the write (write-ahead)");
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
    }

    public void Finished(TransactionState state) =>
        _finished.Add(1, new TagList { { "protocol", state.Spec.Protocol.ToWire() }, { "outcome", state.Status.ToWire() } });

    public void Alert(TransactionState state, Alert alert) =>
        _alerts.Add(1, new KeyValuePair<string, object?>("protocol", state.Spec.Protocol.ToWire()));

    public void Dispose() => _meter.Dispose();
}
