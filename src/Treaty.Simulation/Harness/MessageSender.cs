using System.Globalization;
using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Simulation.Harness;

/// <summary>What the two-phase messages' senders did in a run (for the sweep's coverage line).</summary>
internal sealed record SenderStats(int Registered, int Committed, int RolledBack, int Fenced, int CrashedBeforeSubmit, int Submitted, int Unregistered);

/// <summary>
/// The sender of two-phase messages, as DTM's msg pattern runs it, in the Payment service: it
/// registers the message with the coordinator (prepared, nothing delivered), runs its local
/// transaction — charge the customer and write the committed marker, atomically — and, once that
/// committed, submits the message for delivery. The local transaction may roll back (a business
/// refusal, insufficient funds), the sender may crash while it is open (lost: rolled back) or right
/// between its commit and its submit, and every request may be lost on the way; the coordinator
/// then asks queryPrepared once the message's timeout passed, and the Payment service answers from
/// its marker (<see cref="PaymentService"/>): a query that finds no marker writes a rolled-back one,
/// which fences a local transaction still open — it finds the marker when it tries to commit and
/// rolls back. So the message is delivered exactly when the sender's local transaction committed.
/// </summary>
internal sealed class MessageSender
{
    private static readonly TimeSpan RequestTimeout = TimeSpan.FromMilliseconds(1_000);

    private readonly SimScheduler _scheduler;
    private readonly SimNetwork _network;
    private readonly ParticipantHost _host;
    private readonly PaymentService _payment;
    private readonly Func<(SimNode Node, TransactionEngine Engine)> _coordinator;
    private readonly Action<Func<Task>> _spawn;
    private readonly List<string> _violations;
    private readonly FaultPlan _faults;
    private readonly Random _random;
    private readonly SimNode _control;
    private readonly List<Flow> _flows = [];
    private int _requests;
    private int _registered;
    private int _committed;
    private int _rolledBack;
    private int _fenced;
    private int _crashedBeforeSubmit;
    private int _submitted;
    private int _unregistered;

    public MessageSender(
        SimScheduler scheduler,
        SimNetwork network,
        ParticipantHost paymentHost,
        Func<(SimNode Node, TransactionEngine Engine)> coordinator,
        Action<Func<Task>> spawn,
        List<string> violations,
        FaultPlan faults,
        Random random,
        SimNode control)
    {
        _scheduler = scheduler;
        _network = network;
        _host = paymentHost;
        _payment = (PaymentService)paymentHost.Service;
        _coordinator = coordinator;
        _spawn = spawn;
        _violations = violations;
        _faults = faults;
        _random = random;
        _control = control;
        RollbackRate = _random.NextDouble() * 0.3;
        CrashBeforeSubmit = _random.Next(3) == 0 ? 0 : _random.NextDouble() * 0.4;
    }

    /// <summary>The chance that a sender's local transaction rolls back on its own (a business refusal).</summary>
    public double RollbackRate { get; }

    /// <summary>The chance that the sender crashes right after its local commit, before its submit.</summary>
    public double CrashBeforeSubmit { get; }

    /// <summary>A flow not started yet, or still running in a live Payment incarnation (one that crashed is gone).</summary>
    public bool Busy => _flows.Exists(f => !f.Done && (f.Node is null || f.Node.Alive));

    public SenderStats Stats => new(_registered, _committed, _rolledBack, _fenced, _crashedBeforeSubmit, _submitted, _unregistered);

    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"rollback={RollbackRate:0.00} crashBeforeSubmit={CrashBeforeSubmit:0.00}");

    /// <summary>The sender starts message <paramref name="message"/> at <paramref name="at"/>; its local transaction takes <paramref name="localWork"/>.</summary>
    public void Start(Checkout message, TransactionSpec spec, TimeSpan at, TimeSpan localWork, string description)
    {
        var flow = new Flow(message, spec, localWork);
        _flows.Add(flow);
        _scheduler.At(_control, at, () =>
        {
            Trace(_control, $"message {message.Gid}: {description}");
            Begin(flow, 0);
        });
    }

    private void Begin(Flow flow, int tries)
    {
        if (!_host.Up)
        {
            // The customer's request finds the Payment service down; it comes back a little later.
            if (tries < 10)
            {
                _scheduler.At(_control, TimeSpan.FromMilliseconds(200 + _random.Next(500)), () => Begin(flow, tries + 1));
            }
            else
            {
                flow.Done = true;
                Trace(_control, $"message {flow.Message.Gid}: never sent (payment down)");
            }

            return;
        }

        flow.Node = _host.Node;
        _scheduler.At(flow.Node, TimeSpan.Zero, () => Register(flow, 1));
    }

    /// <summary>Prepare: register the message (idempotent on its gid); nothing is delivered yet.</summary>
    private void Register(Flow flow, int attempt)
    {
        var node = flow.Node!;
        var gid = flow.Message.Gid;
        Ask<SubmitStatus>(node, $"register {gid}#{attempt.ToString(CultureInfo.InvariantCulture)}", (engine, back) => _spawn(async () =>
        {
            try
            {
                var result = await engine.SubmitAsync(flow.Spec, "fp-" + gid, CancellationToken.None);
                back(result.Status);
            }
            catch (IOException)
            {
                back(null); // the coordinator's store failed: 503
            }
        }), status =>
        {
            switch (status)
            {
                case SubmitStatus.Created or SubmitStatus.Existing:
                    _registered++;
                    Trace(node, $"message {gid}: registered ({status}); local transaction begins");
                    _payment.OpenLocal.Add(gid);
                    _scheduler.At(node, flow.LocalWork, () => Commit(flow));
                    break;
                case SubmitStatus.Conflict:
                    _violations.Add($"message {gid}: the register conflicts with its own definition");
                    flow.Done = true;
                    break;
                default:
                    if (attempt < 3)
                    {
                        _scheduler.At(node, TimeSpan.FromMilliseconds(100 + _random.Next(400)), () => Register(flow, attempt + 1));
                    }
                    else
                    {
                        // Never started its local transaction; if a register landed anyway, queryPrepared
                        // finds no marker and the message is aborted.
                        _unregistered++;
                        flow.Done = true;
                        Trace(node, $"message {gid}: could not register; gives up without a local transaction");
                    }

                    break;
            }
        });
    }

    /// <summary>The local transaction's commit: the charge and the committed marker together, unless a query fenced it.</summary>
    private void Commit(Flow flow)
    {
        var node = flow.Node!;
        var m = flow.Message;
        _payment.OpenLocal.Remove(m.Gid);
        if (_payment.Markers.TryGetValue(m.Gid, out var marker) && marker == SenderMarker.RolledBack)
        {
            _fenced++;
            flow.Done = true;
            Trace(node, $"message {m.Gid}: local commit FENCED (queryPrepared wrote the rolled-back marker); rolled back");
            return;
        }

        if (_random.NextDouble() < RollbackRate || _payment.Spendable(m.Customer) < m.AmountCents)
        {
            _rolledBack++;
            flow.Done = true;
            Trace(node, $"message {m.Gid}: local transaction rolled back ({(_payment.Spendable(m.Customer) < m.AmountCents ? "insufficient funds" : "business refusal")})");
            return;
        }

        _payment.Balances[m.Customer] -= m.AmountCents;
        _payment.Markers[m.Gid] = SenderMarker.Committed;
        _payment.MessageCharges[m.Gid] = m.AmountCents;
        _committed++;
        Trace(node, $"message {m.Gid}: local transaction COMMITTED (charged {m.AmountCents / 100.0:0.00}, marker written)");
        if (_faults.Active && _random.NextDouble() < CrashBeforeSubmit && _host.Node == node)
        {
            _crashedBeforeSubmit++;
            Trace(node, $"CRASH (participant) between the local commit of {m.Gid} and its submit");
            _host.Crash();
            _scheduler.At(_control, TimeSpan.FromMilliseconds(10 + _random.Next(2_000)), _host.Restart);
            return;
        }

        Submit(flow, 1);
    }

    /// <summary>Submit: deliver the registered message (accepted only while it is prepared).</summary>
    private void Submit(Flow flow, int attempt)
    {
        var node = flow.Node!;
        var gid = flow.Message.Gid;
        Ask<AdminStatus>(node, $"submit {gid}#{attempt.ToString(CultureInfo.InvariantCulture)}", (engine, back) => _spawn(async () =>
        {
            try
            {
                back((await engine.SubmitPreparedAsync(gid, CancellationToken.None)).Status);
            }
            catch (IOException)
            {
                back(null);
            }
        }), status =>
        {
            switch (status)
            {
                case AdminStatus.Accepted or AdminStatus.Refused:
                    // Refused: no longer prepared (queryPrepared already resolved it).
                    _submitted += status == AdminStatus.Accepted ? 1 : 0;
                    flow.Done = true;
                    Trace(node, $"message {gid}: submit {status}");
                    break;
                case AdminStatus.NotFound:
                    _violations.Add($"message {gid}: submit answered 404 although its register was acknowledged");
                    flow.Done = true;
                    break;
                default:
                    if (attempt < 3)
                    {
                        _scheduler.At(node, TimeSpan.FromMilliseconds(100 + _random.Next(400)), () => Submit(flow, attempt + 1));
                    }
                    else
                    {
                        flow.Done = true;
                        Trace(node, $"message {gid}: submit never answered; the coordinator's queryPrepared will find the marker");
                    }

                    break;
            }
        });
    }

    /// <summary>A request to the coordinator's API over the faulty wire; null when refused, failed or unanswered within a second.</summary>
    private void Ask<T>(SimNode node, string what, Action<TransactionEngine, Action<T?>> serve, Action<T?> onAnswer)
        where T : struct
    {
        var id = $"s{(++_requests).ToString(CultureInfo.InvariantCulture)}";
        var settled = false;
        void Settle(T? answer, string how)
        {
            if (settled)
            {
                return;
            }

            settled = true;
            Trace(node, $"{id} {what}: {how}");
            onAnswer(answer);
        }

        _scheduler.At(node, RequestTimeout, () => Settle(null, "no answer"));
        // The instance the request reached serves it (with several coordinator instances, each
        // request goes to one of them).
        (SimNode Node, TransactionEngine Engine) picked = default;
        _network.Exchange<T?>(
            node,
            id,
            _host.Service.Name,
            () => (picked = _coordinator()).Node,
            (coordinatorNode, back) => serve(picked.Engine!, back),
            null,
            answer => Settle(answer, answer is null ? "refused or failed" : $"{answer}"));
    }

    private void Trace(SimNode node, string text) => _scheduler.Trace.Add(_scheduler, node.Name, text);

    private sealed class Flow(Checkout message, TransactionSpec spec, TimeSpan localWork)
    {
        public Checkout Message { get; } = message;

        public TransactionSpec Spec { get; } = spec;

        public TimeSpan LocalWork { get; } = localWork;

        /// <summary>The Payment incarnation running this flow; when it crashed, the flow is gone.</summary>
        public SimNode? Node { get; set; }

        public bool Done { get; set; }
    }
}
