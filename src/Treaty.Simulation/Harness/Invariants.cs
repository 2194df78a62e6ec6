using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Simulation.Harness;

/// <summary>
/// The invariants: on the order of events, checked where calls leave the coordinator and where they
/// arrive at participants, against the store's durable state; and on the end state, after every run.
/// </summary>
internal sealed partial class SimulationRun
{
    /// <summary>
    /// A branch call leaves the coordinator. Against the store's durable state: a commit, confirm,
    /// doCommit, message delivery or saga step past the pivot only once the commit decision is
    /// durable; a confirm only when every try succeeded (a commit: every prepare; a doCommit: every
    /// preCommit); a forward op (a saga action before the pivot started, try, prepare, canCommit,
    /// preCommit) never started at or after the transaction's deadline, by the engine's clock; a
    /// saga action or a message delivery only after the branches it depends on succeeded; a saga
    /// compensation only after every branch that depends on it was compensated.
    /// </summary>
    private void Leaving(BranchCall call)
    {
        if (Multi)
        {
            MaybePauseMidCall(SimNode.Here, $"its call {call.Gid} {call.Branch ?? "tx"}.{call.Op}#{call.Attempt} in flight");
        }

        var state = _store.Peek(call.Gid);
        var what = $"{call.Gid} {call.Branch ?? "tx"}.{call.Op}#{call.Attempt}";
        if (state is null)
        {
            Violation($"order: {what} sent for a transaction that is not durably stored");
            return;
        }

        var spec = state.Spec;
        var b = call.Branch is null ? -1 : spec.Branches.IndexOf(spec.Branches.First(x => x.Name == call.Branch));
        if (Multi && b >= 0 && state.Branches[b].TryOp(call.Op) is { } durableOp && durableOp.Attempts > call.Attempt)
        {
            // A stale owner's call: decided before it froze, sent after another instance went on.
            _staleSends++;
        }
        switch (call.Op)
        {
            case ProtocolNames.Confirm or ProtocolNames.Commit or ProtocolNames.DoCommit:
                RequireCommitDecision(state, what);
                var vote = call.Op switch
                {
                    ProtocolNames.Confirm => ProtocolNames.Try,
                    ProtocolNames.Commit => ProtocolNames.Prepare,
                    _ => ProtocolNames.PreCommit,
                };
                foreach (var branch in state.Branches)
                {
                    if (branch.Op(vote).Status != OpStatus.Succeeded)
                    {
                        Violation($"order: {what} sent although {branch.Name}.{vote} is {branch.Op(vote).Status.ToWire()} in the durable state");
                    }
                }

                break;
            case ProtocolNames.Action when spec.Protocol == Protocol.Msg:
                RequireCommitDecision(state, what);
                RequireDependenciesDone(state, b, what, aheadOf: null);
                break;
            case ProtocolNames.Action when spec.Protocol == Protocol.Saga:
                RequireDependenciesDone(state, b, what, aheadOf: call);
                var pivot = spec.Branches.IndexOf(spec.Branches.FirstOrDefault(x => x.Pivot)!);
                if (pivot >= 0 && b != pivot && Dag.From(spec).Descendants(pivot).Contains(b))
                {
                    RequireCommitDecision(state, what);
                }
                else if (b != pivot || call.Attempt == 1)
                {
                    RequireBeforeDeadline(state, b, call, what);
                }

                break;
            case ProtocolNames.Try or ProtocolNames.Prepare or ProtocolNames.CanCommit or ProtocolNames.PreCommit:
                RequireBeforeDeadline(state, b, call, what);
                break;
            case ProtocolNames.Compensate:
                var name = spec.Branches[b].Name;
                for (var j = 0; j < spec.Branches.Length; j++)
                {
                    if (!spec.Branches[j].DependsOn.Contains(name))
                    {
                        continue;
                    }

                    var action = state.Branches[j].Op(ProtocolNames.Action);
                    var undo = state.Branches[j].TryOp(ProtocolNames.Compensate);
                    if (action.Status == OpStatus.InFlight || (action.MayHaveApplied() && undo?.Status != OpStatus.Succeeded))
                    {
                        Violation($"order: {what} sent before {spec.Branches[j].Name}, which depends on {name}, was compensated (its action is {action.Status.ToWire()}): compensations must run in reverse dependency order");
                    }
                }

                break;
        }
    }

    /// <summary>
    /// A saga action or a message delivery only after every branch it depends on succeeded: durably,
    /// or, for a saga action's first call (<paramref name="aheadOf"/>; its step does not wait for
    /// its write), at least applied at the dependency's participant, its success on its way into
    /// the durable state.
    /// </summary>
    private void RequireDependenciesDone(TransactionState state, int branch, string what, BranchCall? aheadOf)
    {
        foreach (var dependency in state.Spec.Branches[branch].DependsOn)
        {
            var action = state.Branches.First(x => x.Name == dependency).Op(ProtocolNames.Action);
            var ahead = aheadOf is { Attempt: 1 } && action.Status != OpStatus.NotStarted && _ledger.Of(aheadOf.Gid, dependency).Applied > 0;
            if (action.Status != OpStatus.Succeeded && !ahead)
            {
                Violation($"order: {what} sent although {dependency}, which it depends on, is {action.Status.ToWire()} in the durable state");
            }
        }
    }

    private void RequireCommitDecision(TransactionState state, string what)
    {
        if (state.Outcome != TransactionOutcome.Commit)
        {
            Violation($"order: {what} sent before the commit decision was durable (durable v{state.Version} is {state.Status.ToWire()}, decision {state.Outcome?.ToWire() ?? "none"})");
        }
    }

    private void RequireBeforeDeadline(TransactionState state, int branch, BranchCall call, string what)
    {
        if (state.Deadline is not { } deadline)
        {
            return;
        }

        // When the engine started this attempt, by its own clock: the durable state's record of it
        // (or, if the attempt is not durable yet, the time the engine gave the call: a saga's
        // forward step sends it while its write is on its way; else now).
        var op = state.Branches[branch].Op(call.Op);
        var started = op.Attempts == call.Attempt && op.LastAttemptAt is { } at ? at
            : op.Attempts < call.Attempt && call.StartedAt is { } given ? given
            : Multi && op.Attempts > call.Attempt && StartedAt(call) is { } recorded ? recorded
            : ClockHere().GetUtcNow();
        if (started >= deadline)
        {
            Violation($"order: {what} started {(started - deadline).TotalMilliseconds:0}ms after the transaction's deadline");
        }
    }

    /// <summary>
    /// When the attempt of <paramref name="call"/> was durably started, for a call that leaves after
    /// later attempts are durable: a stale owner that froze between deciding the call and sending
    /// it (another instance went on meanwhile), whose late send is a delayed message, not a new start.
    /// </summary>
    private DateTimeOffset? StartedAt(BranchCall call) =>
        _store.JournalOf(call.Gid)
            .Where(r => r.Entry.Kind == JournalKinds.AttemptStarted && r.Entry.Branch == call.Branch && r.Entry.Op == call.Op && r.Entry.Attempt == call.Attempt)
            .Select(r => (DateTimeOffset?)r.Entry.At)
            .FirstOrDefault();

    /// <summary>
    /// A call from the coordinator arrives at a participant: a confirm, commit or doCommit only when
    /// the commit decision is durable and every branch's try (prepare, preCommit) was applied at its
    /// participant; a message delivery only when the commit decision is durable. In the partition
    /// mode, a participant that receives a preCommit is sometimes cut off right after it applied it,
    /// so that its acknowledgement is lost.
    /// </summary>
    private void Arrived(string service, SimCall call)
    {
        if (call.Branch is null || !_checkouts.TryGetValue(call.Gid, out var checkout))
        {
            return;
        }

        var what = $"{call.Gid} {call.Branch}.{call.Op} at {service}";
        var state = _store.Peek(call.Gid);
        switch (call.Op)
        {
            case ProtocolNames.Confirm or ProtocolNames.Commit or ProtocolNames.DoCommit:
                if (state?.Outcome != TransactionOutcome.Commit)
                {
                    Violation($"order: {what} arrived while the durable decision is {state?.Outcome?.ToWire() ?? "none"}");
                }

                foreach (var branch in new[] { Order, Payment, Inventory })
                {
                    var counts = _ledger.Of(call.Gid, branch);
                    if (call.Op == ProtocolNames.DoCommit ? counts.PreCommitted == 0 : counts.Applied == 0)
                    {
                        Violation($"order: {what} arrived although {branch} never {(call.Op == ProtocolNames.DoCommit ? "acknowledged a preCommit" : "held its reservation")} ({counts})");
                    }
                }

                break;
            case ProtocolNames.Action when checkout.Protocol == Protocol.Msg:
                if (state?.Outcome != TransactionOutcome.Commit)
                {
                    Violation($"order: {what} delivered while the durable decision is {state?.Outcome?.ToWire() ?? "none"}");
                }

                break;
            case ProtocolNames.PreCommit when _options.Mode == SimMode.Partition && _faults.Active && _more.NextDouble() < 0.3:
                StartPartition(service, $"right after it received {call.Gid}'s preCommit");
                break;
        }
    }

    private void CheckInvariants()
    {
        if (_scheduler.Escapes > 0)
        {
            Violation($"determinism: {_scheduler.Escapes} callbacks escaped the scheduler to another thread");
        }

        foreach (var crash in _scheduler.Crashes)
        {
            Violation($"unhandled exception in {crash}");
        }

        foreach (var service in _hosts.Values.Select(h => h.Service))
        {
            foreach (var anomaly in service.Anomalies)
            {
                Violation($"{service.Name}: {anomaly}");
            }
        }

        foreach (var gid in _gids)
        {
            switch (_checkouts[gid].Protocol)
            {
                case Protocol.Saga:
                    CheckSaga(gid);
                    break;
                case Protocol.Msg:
                    CheckMessage(gid);
                    break;
                default:
                    CheckHolds(gid);
                    break;
            }
        }

        _desk.Check(_store.Peek, Charged);
        CheckConservation();
        if (Multi)
        {
            CheckOwnership();
        }
    }

    /// <summary>Whether transaction <paramref name="gid"/> left its customer charged.</summary>
    private bool Charged(string gid)
    {
        var c = _ledger.Of(gid, Payment);
        return _checkouts[gid].Protocol == Protocol.Saga ? c.Applied > c.Undone : c.Finalized > 0;
    }

    private void CheckConservation()
    {
        // Money: wallets plus what confirmed orders and committed message senders charged is what
        // there was; nothing stays held.
        var confirmed = _checkouts.Values.Where(c => c.Protocol != Protocol.Msg && _orders.Orders.GetValueOrDefault(c.Gid) == OrderStatus.Confirmed).ToList();
        var wallets = _payments.Balances.Values.Sum();
        var messages = _payments.MessageCharges.Values.Sum();
        var money = wallets + confirmed.Sum(c => c.AmountCents) + messages;
        if (money != PaymentService.InitialTotal)
        {
            Violation($"money: wallets {wallets} + confirmed orders {confirmed.Sum(c => c.AmountCents)} + message charges {messages} = {money}, expected {PaymentService.InitialTotal}");
        }

        foreach (var (customer, held) in _payments.Held)
        {
            if (held != 0)
            {
                Violation($"money: {held} of {customer}'s wallet still held after everything ended");
            }
        }

        // Stock: nothing stays held; what is sold is what confirmed orders bought.
        foreach (var (sku, _, stock) in InventoryService.Catalogue)
        {
            var available = _inventory.Available[sku];
            var sold = _inventory.Sold[sku];
            var held = _inventory.HeldStock[sku];
            var bought = confirmed.Sum(c => c.Items.Where(i => i.Sku == sku).Sum(i => i.Qty));
            if (available + sold + held != stock || sold != bought || held != 0 || available < 0)
            {
                Violation($"stock {sku}: available {available} + sold {sold} + held {held}, initial {stock}, confirmed orders bought {bought}");
            }
        }

        foreach (var (gid, status) in _orders.Orders)
        {
            if (status == OrderStatus.Pending)
            {
                Violation($"order {gid} is still PENDING after its transaction ended");
            }
        }

        // Messages: the ledger recorded exactly the committed senders' charges, loyalty their points.
        foreach (var (customer, _, _) in PaymentService.Customers)
        {
            var committed = _checkouts.Values.Where(c => c.Protocol == Protocol.Msg && c.Customer == customer && _payments.MessageCharges.ContainsKey(c.Gid)).ToList();
            var ledger = _ledgerService.Totals.GetValueOrDefault(customer);
            var points = _loyalty.Totals.GetValueOrDefault(customer);
            if (ledger != committed.Sum(c => c.AmountCents) || points != committed.Sum(c => c.Points))
            {
                Violation($"messages of {customer}: ledger {ledger} for committed charges {committed.Sum(c => c.AmountCents)}, loyalty {points} for {committed.Sum(c => c.Points)} points");
            }
        }
    }

    private string Liveness(TransactionState state) =>
        $"{state.Gid}: liveness — still {state.Status.ToWire()}{(state.Stuck ? " (stuck)" : "")} after the faults stopped{(_lifted ? " and the permanent fault was lifted" : _faults.Permanent is null ? "" : " (the permanent fault never settled, so it was not lifted)")}: {state.Reason}";

    private void CheckSaga(string gid)
    {
        var state = _store.Peek(gid);
        if (state is null)
        {
            // never submitted, or the submit was lost: CheckoutDesk.Check reports a 2xx without one
            return;
        }

        var counts = state.Spec.Branches.ToDictionary(b => b.Name, b => _ledger.Of(gid, b.Name), StringComparer.Ordinal);
        foreach (var (branch, c) in counts)
        {
            if (c.Applied > 1 || c.Undone > 1)
            {
                Violation($"{gid}.{branch}: applied twice in effect ({c})");
            }

            if (c.AppliedAfterUndo > 0)
            {
                Violation($"{gid}.{branch}: action took effect after its compensation ({c})");
            }
        }

        for (var i = 0; i < state.Branches.Length; i++)
        {
            var name = state.Branches[i].Name;
            if (state.Branches[i].Op(ProtocolNames.Action).Status == OpStatus.Failed && counts[name].Applied > 0)
            {
                Violation($"{gid}.{name}: the coordinator saw a definitive failure but the action applied ({counts[name]})");
            }
        }

        var detail = string.Join(", ", counts.Select(kv => $"{kv.Key}: {kv.Value}"));
        switch (state.Status)
        {
            case TransactionStatus.Committed:
                if (counts.Values.Any(c => c.Applied != 1 || c.Undone != 0))
                {
                    Violation($"{gid}: atomicity — committed but not every action applied exactly once and uncompensated ({detail})");
                }

                break;
            case TransactionStatus.Aborted:
                if (counts.Values.Any(c => c.Undone != Math.Min(c.Applied, 1)) || counts[Confirm].Applied != 0)
                {
                    Violation($"{gid}: atomicity — aborted ({state.Reason}) but an applied action was not compensated exactly once ({detail})");
                }

                break;
            default:
                Violation(Liveness(state));
                break;
        }
    }

    /// <summary>
    /// TCC, 2PC, 3PC: committed ⇒ every branch held once and captured once, nothing released;
    /// aborted ⇒ nothing captured, every hold released; never a mixed outcome (some branches
    /// captured, some not); nothing held once everything ended; no double effect.
    /// </summary>
    private void CheckHolds(string gid)
    {
        var state = _store.Peek(gid);
        var checkout = _checkouts[gid];
        var counts = new[] { Order, Payment, Inventory }.ToDictionary(b => b, b => _ledger.Of(gid, b), StringComparer.Ordinal);
        var detail = string.Join(", ", counts.Select(kv => $"{kv.Key}: {kv.Value}"));
        var protocol = checkout.Protocol.ToWire();
        foreach (var (branch, c) in counts)
        {
            if (c.Applied > 1 || c.Finalized > 1 || c.Undone > 1 || c.PreCommitted > 1)
            {
                Violation($"{gid}.{branch} ({protocol}): applied twice in effect ({c})");
            }

            if (c.AppliedAfterUndo > 0)
            {
                Violation($"{gid}.{branch} ({protocol}): held after its release ({c})");
            }

            if (state?.Branches.First(b => b.Name == branch).Ops[0] is { Status: OpStatus.Failed } && c.Applied > 0)
            {
                Violation($"{gid}.{branch} ({protocol}): the coordinator saw a definitive NO but the branch holds ({c})");
            }

            foreach (var service in new ShopService[] { _orders, _payments, _inventory })
            {
                if (service.Holds.TryGetValue((gid, branch), out var hold) && hold.Open)
                {
                    Violation($"{gid}.{branch} ({protocol}): still holds ({hold.Stage}) after everything ended ({c})");
                }
            }
        }

        var captured = counts.Values.Count(c => c.Finalized > 0);
        if (captured > 0 && captured < counts.Count)
        {
            _mixed.Add(new MixedOutcome(gid, checkout.Protocol, [.. counts.Where(kv => kv.Value.Finalized > 0).Select(kv => kv.Key)], [.. counts.Where(kv => kv.Value.Finalized == 0).Select(kv => kv.Key)]));
            Violation($"{gid}: atomicity ({protocol}) — MIXED outcome, {captured} of {counts.Count} branches committed, the coordinator says {state?.Status.ToWire() ?? "nothing"} ({detail})");
        }

        if (state is null)
        {
            if (counts.Values.Any(c => c.Applied > 0))
            {
                Violation($"{gid} ({protocol}): never stored, yet a branch held ({detail})");
            }

            return;
        }

        switch (state.Status)
        {
            case TransactionStatus.Committed:
                if (counts.Values.Any(c => c.Applied != 1 || c.Finalized != 1 || c.Undone != 0 || c.Heuristic != 0))
                {
                    Violation($"{gid}: atomicity ({protocol}) — committed but not every branch held once and captured once ({detail})");
                }

                break;
            case TransactionStatus.Aborted:
                if (counts.Values.Any(c => c.Finalized != 0 || c.Undone != Math.Min(c.Applied, 1) || c.Heuristic != 0))
                {
                    Violation($"{gid}: atomicity ({protocol}) — aborted ({state.Reason}) but not every hold was released exactly once ({detail})");
                }

                break;
            default:
                Violation(Liveness(state));
                break;
        }
    }

    /// <summary>The two-phase message: delivered (each branch exactly once) if and only if the sender's local transaction committed.</summary>
    private void CheckMessage(string gid)
    {
        var state = _store.Peek(gid);
        var senderCommitted = _payments.MessageCharges.ContainsKey(gid);
        var counts = new[] { Loyalty, Ledger }.ToDictionary(b => b, b => _ledger.Of(gid, b), StringComparer.Ordinal);
        var detail = string.Join(", ", counts.Select(kv => $"{kv.Key}: {kv.Value}"));
        foreach (var (branch, c) in counts)
        {
            if (c.Applied > 1)
            {
                Violation($"{gid}.{branch} (msg): delivered twice in effect ({c})");
            }
        }

        if (state is null)
        {
            if (senderCommitted || counts.Values.Any(c => c.Applied > 0))
            {
                Violation($"{gid} (msg): never registered, yet the sender committed ({senderCommitted}) or a branch applied ({detail})");
            }

            return;
        }

        if (!state.IsTerminal)
        {
            Violation(Liveness(state));
            return;
        }

        var delivered = state.Status == TransactionStatus.Committed;
        if (delivered != senderCommitted)
        {
            Violation($"{gid}: atomicity (msg) — the message is {state.Status.ToWire()} ({state.Reason}) but the sender's local transaction {(senderCommitted ? "committed" : "did not commit")} ({detail})");
        }

        if (counts.Values.Any(c => c.Applied != (senderCommitted ? 1 : 0)))
        {
            Violation($"{gid}: atomicity (msg) — sender {(senderCommitted ? "committed" : "rolled back")}, deliveries {detail}");
        }
    }
}
