using System.Globalization;
using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Simulation.Harness;

/// <summary>The fault rates of one run (picked from its seed); <see cref="Active"/> is false once the fault phase ends.</summary>
internal sealed class FaultPlan
{
    public bool Active { get; set; } = true;

    public double DropRequest { get; init; }

    public double DropReply { get; init; }

    public double Duplicate { get; init; }

    public double Delay { get; init; }

    public double Unavailable { get; init; }

    public double CrashAtWrite { get; init; }

    public double WriteError { get; init; }

    /// <summary>The chance that a timer fires early or late (for the whole run: real timers are never exact).</summary>
    public double TimerSkew { get; init; }

    /// <summary>A participant operation that fails from some moment of the fault phase until the operator lifts it; null in most seeds.</summary>
    public PermanentFault? Permanent { get; init; }

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"dropReq={DropRequest:0.00} dropReply={DropReply:0.00} dup={Duplicate:0.00} delay={Delay:0.00} 503={Unavailable:0.00} crashAtWrite={CrashAtWrite:0.000} writeError={WriteError:0.000} timerSkew={TimerSkew:0.00}{(Permanent is null ? "" : $" permanent=[{Permanent.Description}]")}");
}

/// <summary>
/// A fault that does not go away by itself: some operations of one participant (for one customer,
/// or all of them) answer 503 from <see cref="Active"/> on, after the fault phase too, until the
/// operator lifts it. A transaction that needs one of them can only end up stuck (its
/// compensation, or an action at or past the pivot, is never abandoned) or aborted.
/// </summary>
internal sealed class PermanentFault(string description, string? customer, params (string Branch, string Op)[] ops)
{
    /// <summary>The error the engine records for every call the fault answers.</summary>
    public const string Error = "unavailable for good (injected permanent fault)";

    public string Description { get; } = description;

    /// <summary>Only this customer's checkouts, or everyone's when null.</summary>
    public string? Customer { get; } = customer;

    public bool Active { get; set; }

    public IReadOnlyList<(string Branch, string Op)> Ops { get; } = ops;

    /// <summary>Whether the fault could ever answer a call of this transaction's branch operation.</summary>
    public bool Covers(Checkout checkout, string branch, string op) =>
        (Customer is null || checkout.Customer == Customer) && Ops.Contains((branch, op));
}

/// <summary>A participant service and its current incarnation. Its tables survive a crash; queued work does not.</summary>
internal sealed class ParticipantHost(SimScheduler scheduler, ShopService service)
{
    private int _incarnation = 1;

    public ShopService Service { get; } = service;

    public SimNode Node { get; private set; } = new(scheduler, $"{service.Name}#1");

    public bool Up => Node.Alive;

    public void Crash()
    {
        Node.Kill();
        scheduler.Trace.Add(scheduler, Node.Name, "CRASH (participant)");
    }

    public void Restart()
    {
        Node = new SimNode(scheduler, $"{Service.Name}#{++_incarnation}");
        scheduler.Trace.Add(scheduler, Node.Name, "restart (participant)");
    }
}

/// <summary>
/// Carries branch calls from a coordinator incarnation to a participant and the answers back, with
/// random latency and, during the fault phase, lost, duplicated and delayed (reordered) messages
/// and 503s, and the 503s of a <see cref="PermanentFault"/> while it lasts. An answer goes to the
/// incarnation that asked: if it crashed, the answer is dropped.
/// </summary>
internal sealed class SimNetwork(
    SimScheduler scheduler,
    Random random,
    FaultPlan faults,
    SimNode wire,
    IReadOnlyDictionary<string, ParticipantHost> hosts,
    IReadOnlyDictionary<string, Checkout> checkouts)
{
    public long LastDeliveryTicks { get; private set; }

    /// <summary>The node that carries messages (arrivals run here, then go to whoever is up).</summary>
    public SimNode Wire => wire;

    public int Messages { get; private set; }

    public void Request(SimNode from, BranchCall call, string id, Action<BranchOutcome> onReply)
    {
        var (service, op) = Parse(call.Url);
        Messages++;
        if (faults.Active && random.NextDouble() < faults.DropRequest)
        {
            Trace(from, $"{id} request DROPPED");
            return;
        }

        var copies = faults.Active && random.NextDouble() < faults.Duplicate ? 2 : 1;
        for (var copy = 0; copy < copies; copy++)
        {
            var latency = Latency();
            if (copy == 1)
            {
                Trace(from, $"{id} request DUPLICATED (+{latency.TotalMilliseconds:0}ms)");
            }

            Schedule(wire, latency, () => Arrive(from, call, id, service, op, onReply));
        }
    }

    private void Arrive(SimNode from, BranchCall call, string id, string service, string op, Action<BranchOutcome> onReply)
    {
        var host = hosts[service];
        if (!host.Up)
        {
            Trace(wire, $"{id} refused: {service} is down");
            Reply(from, id, BranchOutcome.Unknown(null, $"connection refused by {service}"), onReply);
            return;
        }

        if (faults.Permanent is { Active: true } permanent && permanent.Covers(checkouts[call.Gid], call.Branch ?? "", call.Op))
        {
            Trace(host.Node, $"{id} 503 {PermanentFault.Error}");
            Reply(from, id, BranchOutcome.Unknown(503, PermanentFault.Error), onReply);
            return;
        }

        if (faults.Active && random.NextDouble() < faults.Unavailable)
        {
            Trace(host.Node, $"{id} 503 unavailable");
            Reply(from, id, BranchOutcome.Unknown(503, "service unavailable"), onReply);
            return;
        }

        // Processing takes a moment; a crash meanwhile loses the request with its local transaction.
        var node = host.Node;
        Schedule(node, TimeSpan.FromMicroseconds(random.Next(2_000)), () =>
        {
            var answer = host.Service.Handle(call.Gid, call.Branch ?? "", call.Op, op, out var note);
            Trace(node, $"{id} {call.Branch}.{op} -> {answer.Status.ToString(CultureInfo.InvariantCulture)} {note}");
            var outcome = BranchOutcome.Classify(answer.Status) switch
            {
                OutcomeKind.Succeeded => BranchOutcome.Success(answer.Status, answer.Body),
                OutcomeKind.Failed => BranchOutcome.Failure(answer.Status, answer.Body),
                _ => BranchOutcome.Unknown(answer.Status, answer.Body),
            };
            Reply(from, id, outcome, onReply);
        });
    }

    private void Reply(SimNode to, string id, BranchOutcome outcome, Action<BranchOutcome> onReply)
    {
        if (faults.Active && random.NextDouble() < faults.DropReply)
        {
            Trace(wire, $"{id} reply DROPPED");
            return;
        }

        Schedule(to, Latency(), () => onReply(outcome));
    }

    private TimeSpan Latency()
    {
        var latency = TimeSpan.FromMicroseconds(500 + random.Next(20_000));
        if (faults.Active && random.NextDouble() < faults.Delay)
        {
            latency += TimeSpan.FromMilliseconds(50 + random.Next(3_000));
        }

        return latency;
    }

    /// <summary>Delivers a message of another protocol (the Shop's HTTP API) on the same wire, so quiescence waits for it.</summary>
    public void Deliver(SimNode node, TimeSpan delay, Action action) => Schedule(node, delay, action);

    private void Schedule(SimNode node, TimeSpan delay, Action action)
    {
        LastDeliveryTicks = Math.Max(LastDeliveryTicks, scheduler.NowTicks + delay.Ticks);
        scheduler.At(node, delay, action);
    }

    private void Trace(SimNode node, string text) => scheduler.Trace.Add(scheduler, node.Name, text);

    private static (string Service, string Op) Parse(string url)
    {
        // sim://{service}/{op}
        var rest = url["sim://".Length..];
        var slash = rest.IndexOf('/', StringComparison.Ordinal);
        return (rest[..slash], rest[(slash + 1)..]);
    }
}

/// <summary>
/// The engine's <see cref="IBranchInvoker"/> over <see cref="SimNetwork"/>: the first of the answer
/// and the call's own timeout (on the simulated clock) wins; later or duplicated answers are ignored.
/// </summary>
internal sealed class SimBranchInvoker(SimScheduler scheduler, TimeProvider time, SimNetwork network) : IBranchInvoker
{
    private long _calls;

    public Task<BranchOutcome> InvokeAsync(BranchCall call, CancellationToken cancellationToken)
    {
        var node = SimNode.Here;
        var id = $"c{(++_calls).ToString(CultureInfo.InvariantCulture)}";
        var done = new TaskCompletionSource<BranchOutcome>(TaskCreationOptions.RunContinuationsAsynchronously);
        scheduler.Trace.Add(scheduler, node.Name, $"{id} send {call.Gid} {call.Branch}.{call.Op}#{call.Attempt.ToString(CultureInfo.InvariantCulture)}");
        var timer = time.CreateTimer(_ =>
        {
            if (done.TrySetResult(BranchOutcome.Unknown(null, "timeout")))
            {
                scheduler.Trace.Add(scheduler, node.Name, $"{id} TIMEOUT after {call.Timeout.TotalMilliseconds:0}ms");
            }
        }, null, call.Timeout, Timeout.InfiniteTimeSpan);
        network.Request(node, call, id, outcome =>
        {
            if (done.TrySetResult(outcome))
            {
                timer.Dispose();
                scheduler.Trace.Add(scheduler, node.Name, $"{id} answer {outcome.Kind} {outcome.StatusCode?.ToString(CultureInfo.InvariantCulture) ?? "-"}");
            }
            else
            {
                scheduler.Trace.Add(scheduler, node.Name, $"{id} late answer ignored ({outcome.Kind})");
            }
        });
        return done.Task;
    }
}
