using System.Globalization;
using Treaty.AspNetCore.Barrier;
using Treaty.AspNetCore.InDoubt;
using Treaty.Core.Model;

namespace Treaty.Simulation.Harness;

/// <summary>
/// One business transaction of the workload: a Shop checkout (saga, tcc, 2pc, 3pc) of items paid
/// from a customer's wallet, or a two-phase message (msg) whose sender, the Payment service,
/// charges the customer in its own local transaction and whose branches award loyalty points and
/// record the charge in the ledger.
/// </summary>
internal sealed record Checkout(string Gid, Protocol Protocol, string Customer, long AmountCents, IReadOnlyList<(string Sku, int Qty)> Items)
{
    public string PayloadJson =>
        $$"""{"protocol":"{{Protocol.ToWire()}}","customer":"{{Customer}}","amount":{{AmountCents.ToString(CultureInfo.InvariantCulture)}},"items":[{{string.Join(",", Items.Select(i => $$"""{"sku":"{{i.Sku}}","qty":{{i.Qty.ToString(CultureInfo.InvariantCulture)}}}"""))}}]}""";

    /// <summary>Loyalty points a delivered message awards.</summary>
    public long Points => 1 + (AmountCents / 100);

    /// <summary>Whether the branches hold a reservation that a final op captures (tcc, 2pc, 3pc).</summary>
    public bool Holds => Protocol is Protocol.Tcc or Protocol.TwoPhaseCommit or Protocol.ThreePhaseCommit;
}

/// <summary>One call as a participant receives it: the envelope's gid, branch and op, and the Idempotency-Key header.</summary>
/// <param name="Local">Run by the participant's own in-doubt resolver, not sent by the coordinator.</param>
internal sealed record SimCall(string Gid, string? Branch, string Op, string Key, bool Local = false);

/// <summary>Per (gid, branch): effects applied and undone, as seen by the participants (for the invariants).</summary>
internal sealed class EffectLedger
{
    private readonly Dictionary<(string Gid, string Branch), Counts> _counts = [];

    public Counts Of(string gid, string branch)
    {
        if (!_counts.TryGetValue((gid, branch), out var counts))
        {
            counts = new Counts();
            _counts[(gid, branch)] = counts;
        }

        return counts;
    }

    internal sealed class Counts
    {
        /// <summary>The forward effect took place: a saga action, a try's hold, a prepared or voted intent, a delivered message.</summary>
        public int Applied { get; set; }

        /// <summary>3PC: the intent was marked pre-committed.</summary>
        public int PreCommitted { get; set; }

        /// <summary>The hold was made permanent (confirm, commit, doCommit).</summary>
        public int Finalized { get; set; }

        /// <summary>The effect was undone (compensate, cancel, rollback, abort ran its handler).</summary>
        public int Undone { get; set; }

        public int Declined { get; set; }

        /// <summary>An effect landed after its compensation had already run (a hanging action).</summary>
        public int AppliedAfterUndo { get; set; }

        /// <summary>A final op met a dropped (or never made) hold, or an undo met a captured one: the participant could not follow.</summary>
        public int Heuristic { get; set; }

        /// <summary>Of <see cref="Finalized"/> and <see cref="Undone"/>: run by the participant's in-doubt resolver.</summary>
        public int ResolvedLocally { get; set; }

        public override string ToString() =>
            $"applied={Applied}{(PreCommitted > 0 ? $" precommitted={PreCommitted}" : "")}{(Finalized > 0 ? $" finalized={Finalized}" : "")} undone={Undone} declined={Declined}"
            + (AppliedAfterUndo > 0 ? $" late={AppliedAfterUndo}" : "") + (Heuristic > 0 ? $" heuristic={Heuristic}" : "") + (ResolvedLocally > 0 ? $" local={ResolvedLocally}" : "");
    }
}

/// <summary>Where a held reservation stands.</summary>
internal enum HoldStage
{
    Held,
    PreCommitted,
    Finalized,
    Dropped,
}

/// <summary>A reservation of a tcc try, a 2pc prepare or a 3pc canCommit: the durable prepared intent.</summary>
internal sealed class Hold(HoldStage stage)
{
    public HoldStage Stage { get; set; } = stage;

    public bool Open => Stage is HoldStage.Held or HoldStage.PreCommitted;
}

/// <summary>A participant left in doubt: it voted YES (2PC prepare, 3PC canCommit) and has not heard the outcome.</summary>
internal sealed class InDoubtEntry(Protocol protocol, PreparedStage stage, long sinceTicks)
{
    public Protocol Protocol { get; } = protocol;

    public PreparedStage Stage { get; set; } = stage;

    /// <summary>Monotonic time it entered <see cref="Stage"/>.</summary>
    public long SinceTicks { get; set; } = sinceTicks;

    /// <summary>Bumped on every change, so a check scheduled for an older stage does nothing.</summary>
    public int Generation { get; set; }
}

/// <summary>The durable state of one Shop service: its business tables, its holds, its in-doubt table and its barrier rows.</summary>
internal abstract class ShopService(string name, SimBarrier barrier, EffectLedger ledger, IReadOnlyDictionary<string, Checkout> checkouts)
{
    public string Name { get; } = name;

    public SimBarrier Barrier { get; } = barrier;

    protected EffectLedger Ledger { get; } = ledger;

    protected IReadOnlyDictionary<string, Checkout> Checkouts { get; } = checkouts;

    /// <summary>Anything a correct coordinator could never make the service see.</summary>
    public List<string> Anomalies { get; } = [];

    /// <summary>Reservations of tcc/2pc/3pc branches, per (gid, branch).</summary>
    public Dictionary<(string Gid, string Branch), Hold> Holds { get; } = [];

    /// <summary>2PC/3PC branches that voted YES and have not heard the outcome (a durable table: it survives a crash).</summary>
    public Dictionary<(string Gid, string Branch), InDoubtEntry> InDoubt { get; } = [];

    /// <summary>Called when an in-doubt entry is created or changes stage (the resolver schedules its check).</summary>
    public Action<(string Gid, string Branch), InDoubtEntry>? InDoubtChanged { get; set; }

    /// <summary>The monotonic clock (for in-doubt timestamps).</summary>
    public Func<long> Now { get; set; } = () => 0;

    /// <summary>Compensation calls that reached this service, applied or not (to spot hanging actions).</summary>
    private HashSet<(string Gid, string Branch)> Undos { get; } = [];

    /// <summary>Applies one call atomically (one scheduler event = one local transaction).</summary>
    public ParticipantReply Handle(SimCall call, out string note)
    {
        if (call.Branch is null)
        {
            return HandleTransactionOp(call, out note);
        }

        var checkout = Checkouts[call.Gid];
        if (checkout.Holds)
        {
            return HandleHold(checkout, call, out note);
        }

        return HandleOther(checkout, call, out note);
    }

    /// <summary>A saga's or a message's branch op.</summary>
    protected abstract ParticipantReply HandleOther(Checkout checkout, SimCall call, out string note);

    /// <summary>A transaction-level op (msg's queryPrepared); only the sender has one.</summary>
    protected virtual ParticipantReply HandleTransactionOp(SimCall call, out string note)
    {
        note = "unknown op";
        return new ParticipantReply(404, """{"title":"no such operation"}""");
    }

    /// <summary>Why this service refuses to reserve for <paramref name="checkout"/>, or null.</summary>
    protected virtual string? Refusal(Checkout checkout) => null;

    /// <summary>The process crashed: whatever was in flight in it is gone (its tables are not).</summary>
    public virtual void Crashed()
    {
    }

    /// <summary>Makes the reservation (a hold of money, stock, a PENDING order).</summary>
    protected abstract void Reserve(Checkout checkout);

    /// <summary>Makes the reservation permanent (capture, sell, CONFIRMED).</summary>
    protected abstract void Capture(Checkout checkout);

    /// <summary>Drops the reservation (release, CANCELLED).</summary>
    protected abstract void Release(Checkout checkout);

    /// <summary>A forward op of a saga or a message through the barrier: <paramref name="body"/> says whether it applied.</summary>
    protected ParticipantReply Forward(SimCall call, Func<Checkout, (ParticipantReply, bool)> body, out string note)
    {
        var applied = false;
        var branch = call.Branch!;
        var reply = Barrier.Execute(call.Gid, branch, call.Op, call.Key, () =>
        {
            var counts = Ledger.Of(call.Gid, branch);
            (var answer, applied) = body(Checkouts[call.Gid]);
            if (applied)
            {
                counts.Applied++;
                if (counts.Undone > 0 || Undos.Contains((call.Gid, branch)))
                {
                    counts.AppliedAfterUndo++;
                }
            }
            else
            {
                counts.Declined++;
            }

            return answer;
        }, out var decision);
        note = Note(decision, applied ? "applied" : "declined");
        return reply;
    }

    /// <summary>A saga compensation through the barrier.</summary>
    protected ParticipantReply Backward(SimCall call, Func<Checkout, ParticipantReply> undo, out string note)
    {
        var branch = call.Branch!;
        var reply = Barrier.Execute(call.Gid, branch, call.Op, call.Key, () =>
        {
            Ledger.Of(call.Gid, branch).Undone++;
            return undo(Checkouts[call.Gid]);
        }, out var decision);
        Undos.Add((call.Gid, branch));
        note = Note(decision, "compensated");
        return reply;
    }

    /// <summary>Every op of a tcc, 2pc or 3pc branch: holds, pre-commit marks, captures and releases, through the barrier.</summary>
    private ParticipantReply HandleHold(Checkout checkout, SimCall call, out string note)
    {
        var branch = call.Branch!;
        var id = (call.Gid, branch);
        var counts = Ledger.Of(call.Gid, branch);
        var ran = "";
        var kind = BarrierRules.KindOf(call.Op);
        var reply = Barrier.Execute(call.Gid, branch, call.Op, call.Key, () =>
        {
            Holds.TryGetValue(id, out var hold);
            switch (kind)
            {
                case BarrierOpKind.Forward when call.Op == ProtocolNames.PreCommit:
                    if (hold is not { Stage: HoldStage.Held })
                    {
                        Anomalies.Add($"{call.Gid}.{branch}: preCommit with {(hold is null ? "nothing voted" : $"the intent {hold.Stage}")}");
                        ran = "refused: nothing to pre-commit";
                        return ParticipantReply.Declined("nothing to pre-commit");
                    }

                    hold.Stage = HoldStage.PreCommitted;
                    counts.PreCommitted++;
                    EnterDoubt(id, checkout.Protocol, PreparedStage.PreCommitted);
                    ran = "pre-committed";
                    return ParticipantReply.Ok("""{"preCommitted":true}""");

                case BarrierOpKind.Forward:
                    if (Refusal(checkout) is { } why)
                    {
                        counts.Declined++;
                        ran = "declined";
                        return ParticipantReply.Declined(why);
                    }

                    Reserve(checkout);
                    counts.Applied++;
                    if (counts.Undone > 0 || Undos.Contains(id))
                    {
                        counts.AppliedAfterUndo++;
                    }

                    // A second hold under another key holds twice: the invariants count it.
                    Holds[id] = new Hold(HoldStage.Held);
                    if (InDoubtRules.StageAfter(call.Op) is { } stage)
                    {
                        EnterDoubt(id, checkout.Protocol, stage);
                    }

                    ran = "held";
                    return ParticipantReply.Ok("""{"held":true}""");

                case BarrierOpKind.Final:
                    if (hold is { Open: true })
                    {
                        Capture(checkout);
                        hold.Stage = HoldStage.Finalized;
                        counts.Finalized++;
                        counts.ResolvedLocally += call.Local ? 1 : 0;
                        LeaveDoubt(id);
                        ran = "captured";
                        return ParticipantReply.Ok("""{"captured":true}""");
                    }

                    if (hold is { Stage: HoldStage.Finalized })
                    {
                        ran = "already captured";
                        return ParticipantReply.Ok("""{"captured":true}""");
                    }

                    // Told to commit what was released (or never held): it cannot follow. It says so
                    // in a 2xx so the coordinator finishes; the invariants see the mixed outcome.
                    counts.Heuristic++;
                    ran = $"HEURISTIC: nothing to capture ({(hold is null ? "never held" : "already released")})";
                    return ParticipantReply.Ok("""{"captured":false,"heuristic":"rolled-back"}""");

                default:
                    Undos.Add(id);
                    if (hold is { Open: true })
                    {
                        Release(checkout);
                        hold.Stage = HoldStage.Dropped;
                        counts.Undone++;
                        counts.ResolvedLocally += call.Local ? 1 : 0;
                        LeaveDoubt(id);
                        ran = "released";
                        return ParticipantReply.Ok("""{"released":true}""");
                    }

                    if (hold is { Stage: HoldStage.Finalized })
                    {
                        counts.Heuristic++;
                        ran = "HEURISTIC: already captured, cannot release";
                        return ParticipantReply.Ok("""{"released":false,"heuristic":"committed"}""");
                    }

                    ran = "nothing held";
                    return ParticipantReply.Ok("""{"released":true}""");
            }
        }, out var decision);
        if (kind == BarrierOpKind.Compensation)
        {
            Undos.Add(id);
            if (decision == BarrierDecision.NullCompensation)
            {
                LeaveDoubt(id);
            }
        }

        note = Note(decision, ran);
        return reply;
    }

    private void EnterDoubt((string Gid, string Branch) id, Protocol protocol, PreparedStage stage)
    {
        if (!InDoubt.TryGetValue(id, out var entry))
        {
            entry = new InDoubtEntry(protocol, stage, Now());
            InDoubt[id] = entry;
        }

        entry.Stage = stage;
        entry.SinceTicks = Now();
        entry.Generation++;
        InDoubtChanged?.Invoke(id, entry);
    }

    private void LeaveDoubt((string Gid, string Branch) id)
    {
        if (InDoubt.Remove(id, out var entry))
        {
            entry.Generation++;
        }
    }

    private static string Note(BarrierDecision decision, string ran) => decision switch
    {
        BarrierDecision.ReplayStored => "duplicate: first answer replayed",
        BarrierDecision.NullCompensation => "null compensation",
        BarrierDecision.SkipHanging => "hanging action refused (already compensated)",
        _ => ran,
    };

    protected static ParticipantReply UnknownOp(out string note)
    {
        note = "unknown op";
        return new ParticipantReply(404, """{"title":"no such operation"}""");
    }
}

internal enum OrderStatus
{
    Pending,
    Confirmed,
    Cancelled,
}

/// <summary>Order: saga create (PENDING), cancel, confirm (the pivot); tcc/2pc/3pc: a PENDING order held, CONFIRMED or CANCELLED.</summary>
internal sealed class OrderService(SimBarrier barrier, EffectLedger ledger, IReadOnlyDictionary<string, Checkout> checkouts)
    : ShopService("order", barrier, ledger, checkouts)
{
    public Dictionary<string, OrderStatus> Orders { get; } = new(StringComparer.Ordinal);

    /// <summary>The idempotency records of <c>POST /checkout</c>, by key (the kit's table).</summary>
    public Dictionary<string, IdempotencyRow> IdempotencyKeys { get; } = new(StringComparer.Ordinal);

    /// <summary>Orders placed by a checkout, committed with its stored response: order id (= gid) → idempotency key.</summary>
    public Dictionary<string, string> Placed { get; } = new(StringComparer.Ordinal);

    protected override ParticipantReply HandleOther(Checkout checkout, SimCall call, out string note)
    {
        var gid = call.Gid;
        switch ((call.Branch, call.Op))
        {
            case ("order", ProtocolNames.Action):
                return Forward(call, c =>
                {
                    if (Orders.ContainsKey(gid))
                    {
                        Anomalies.Add($"order {gid} created twice");
                    }

                    Orders[gid] = OrderStatus.Pending;
                    return (ParticipantReply.Ok($$"""{"orderId":"{{gid}}","status":"PENDING"}"""), true);
                }, out note);
            case ("order", ProtocolNames.Compensate):
                return Backward(call, c =>
                {
                    if (Orders.GetValueOrDefault(gid) == OrderStatus.Confirmed)
                    {
                        Anomalies.Add($"order {gid} cancelled after it was confirmed");
                    }

                    Orders[gid] = OrderStatus.Cancelled;
                    return ParticipantReply.Ok("""{"status":"CANCELLED"}""");
                }, out note);
            case ("confirm", ProtocolNames.Action):
                return Forward(call, c =>
                {
                    if (!Orders.TryGetValue(gid, out var status) || status != OrderStatus.Pending)
                    {
                        return (ParticipantReply.Declined($"order is {(Orders.ContainsKey(gid) ? Orders[gid].ToString() : "missing")}"), false);
                    }

                    Orders[gid] = OrderStatus.Confirmed;
                    return (ParticipantReply.Ok("""{"status":"CONFIRMED"}"""), true);
                }, out note);
            default:
                return UnknownOp(out note);
        }
    }

    protected override void Reserve(Checkout checkout)
    {
        if (Orders.ContainsKey(checkout.Gid))
        {
            Anomalies.Add($"order {checkout.Gid} created twice");
        }

        Orders[checkout.Gid] = OrderStatus.Pending;
    }

    protected override void Capture(Checkout checkout) => Orders[checkout.Gid] = OrderStatus.Confirmed;

    protected override void Release(Checkout checkout) => Orders[checkout.Gid] = OrderStatus.Cancelled;
}

/// <summary>How the sender's local transaction of a two-phase message stands, and its DTM-style marker.</summary>
internal enum SenderMarker
{
    /// <summary>Written by the sender's local transaction as it commits (with the charge).</summary>
    Committed,

    /// <summary>Written by queryPrepared when it found no marker: fences a local transaction still open.</summary>
    RolledBack,
}

/// <summary>
/// Payment: the customer wallets. Saga: reserve debits or declines, refund credits back. tcc/2pc/3pc:
/// a hold on the balance, captured or released. It is also the two-phase message's sender: its local
/// transaction charges the customer and writes a marker, and it answers queryPrepared from the
/// marker (see <see cref="MessageSender"/>).
/// </summary>
internal sealed class PaymentService : ShopService
{
    public PaymentService(SimBarrier barrier, EffectLedger ledger, IReadOnlyDictionary<string, Checkout> checkouts)
        : base("payment", barrier, ledger, checkouts)
    {
        foreach (var (customer, balance, limit) in Customers)
        {
            Balances[customer] = balance;
            Limits[customer] = limit;
            Held[customer] = 0;
        }
    }

    public static readonly (string Customer, long BalanceCents, long LimitCents)[] Customers =
    [
        ("alice", 2000_00, 1000_00),
        ("bob", 50_00, 1000_00),
        ("carol", 500_00, 100_00),
    ];

    public static long InitialTotal => Customers.Sum(c => c.BalanceCents);

    public Dictionary<string, long> Balances { get; } = new(StringComparer.Ordinal);

    public Dictionary<string, long> Limits { get; } = new(StringComparer.Ordinal);

    /// <summary>Money held by open tcc/2pc/3pc reservations, per customer.</summary>
    public Dictionary<string, long> Held { get; } = new(StringComparer.Ordinal);

    /// <summary>The two-phase messages' markers (the sender's barrier rows), per gid.</summary>
    public Dictionary<string, SenderMarker> Markers { get; } = new(StringComparer.Ordinal);

    /// <summary>Messages whose sender's local transaction committed (the charge was made), per gid.</summary>
    public Dictionary<string, long> MessageCharges { get; } = new(StringComparer.Ordinal);

    /// <summary>queryPrepared answers: committed, rolled back (with the fence written now), and fences.</summary>
    public int Fences { get; private set; }

    /// <summary>Messages whose sender's local transaction is open now (it holds the marker row's lock).</summary>
    public HashSet<string> OpenLocal { get; } = new(StringComparer.Ordinal);

    /// <summary>Whether a queryPrepared that meets an open local transaction times out waiting for its lock (else it fences it).</summary>
    public Func<bool> LockWaitTimesOut { get; set; } = () => false;

    /// <summary>queryPrepared answers 503 after a lock wait timeout.</summary>
    public int LockWaits { get; private set; }

    /// <summary>A crash rolls back the local transactions that were open.</summary>
    public override void Crashed() => OpenLocal.Clear();

    public long Spendable(string customer) => Balances[customer] - Held[customer];

    protected override ParticipantReply HandleOther(Checkout checkout, SimCall call, out string note)
    {
        switch (call.Op)
        {
            case ProtocolNames.Action:
                return Forward(call, c =>
                {
                    if (c.AmountCents > Limits[c.Customer])
                    {
                        return (ParticipantReply.Declined("over the per-order limit"), false);
                    }

                    if (c.AmountCents > Spendable(c.Customer))
                    {
                        return (ParticipantReply.Declined("insufficient funds"), false);
                    }

                    Balances[c.Customer] -= c.AmountCents;
                    return (ParticipantReply.Ok("""{"charged":true}"""), true);
                }, out note);
            case ProtocolNames.Compensate:
                return Backward(call, c =>
                {
                    Balances[c.Customer] += c.AmountCents;
                    return ParticipantReply.Ok("""{"refunded":true}""");
                }, out note);
            default:
                return UnknownOp(out note);
        }
    }

    /// <summary>
    /// DTM's QueryPrepared on the sender's barrier: the marker of a committed local transaction
    /// answers 200; no marker means the local transaction has not committed, so a "rolled back"
    /// marker is written now — a local transaction still open will find it when it tries to commit
    /// and roll back — and the answer is a definitive 409. Either answer is final.
    /// </summary>
    protected override ParticipantReply HandleTransactionOp(SimCall call, out string note)
    {
        if (call.Op != ProtocolNames.QueryPrepared)
        {
            return UnknownOp(out note);
        }

        if (!Markers.TryGetValue(call.Gid, out var marker))
        {
            if (OpenLocal.Contains(call.Gid) && LockWaitTimesOut())
            {
                // The open local transaction holds the marker row's lock: the query's insert waited
                // for it until the database gave up. Nothing was written; the coordinator asks again.
                LockWaits++;
                note = "lock wait timeout (the local transaction is still open)";
                return new ParticipantReply(503, """{"title":"Service Unavailable","detail":"lock wait timeout"}""");
            }

            Markers[call.Gid] = marker = SenderMarker.RolledBack;
            Fences++;
            note = $"no marker: rolled-back marker written{(OpenLocal.Contains(call.Gid) ? " (fences the open local transaction)" : "")}";
        }
        else
        {
            note = $"marker {marker}";
        }

        return marker == SenderMarker.Committed
            ? ParticipantReply.Ok("""{"status":"committed"}""")
            : new ParticipantReply(409, """{"type":"https://treaty.dev/problems/msg-rolled-back","title":"Rolled back","status":409,"detail":"the sender's local transaction did not commit"}""");
    }

    protected override string? Refusal(Checkout checkout) =>
        checkout.AmountCents > Limits[checkout.Customer] ? "over the per-order limit"
        : checkout.AmountCents > Spendable(checkout.Customer) ? "insufficient funds"
        : null;

    protected override void Reserve(Checkout checkout) => Held[checkout.Customer] += checkout.AmountCents;

    protected override void Capture(Checkout checkout)
    {
        Held[checkout.Customer] -= checkout.AmountCents;
        Balances[checkout.Customer] -= checkout.AmountCents;
    }

    protected override void Release(Checkout checkout) => Held[checkout.Customer] -= checkout.AmountCents;
}

/// <summary>Inventory: stock per SKU. Saga: reserve sells from stock or fails, release puts back. tcc/2pc/3pc: a hold on stock, sold or released.</summary>
internal sealed class InventoryService : ShopService
{
    public InventoryService(SimBarrier barrier, EffectLedger ledger, IReadOnlyDictionary<string, Checkout> checkouts)
        : base("inventory", barrier, ledger, checkouts)
    {
        foreach (var (sku, _, stock) in Catalogue)
        {
            Available[sku] = stock;
            Sold[sku] = 0;
            HeldStock[sku] = 0;
        }
    }

    public static readonly (string Sku, long PriceCents, int Stock)[] Catalogue =
    [
        ("book", 25_00, 12),
        ("mug", 8_00, 8),
        ("laptop", 1500_00, 2),
        ("pen", 2_00, 0),
    ];

    public Dictionary<string, int> Available { get; } = new(StringComparer.Ordinal);

    /// <summary>Stock taken by saga reservations and captured holds.</summary>
    public Dictionary<string, int> Sold { get; } = new(StringComparer.Ordinal);

    /// <summary>Stock held by open tcc/2pc/3pc reservations.</summary>
    public Dictionary<string, int> HeldStock { get; } = new(StringComparer.Ordinal);

    protected override ParticipantReply HandleOther(Checkout checkout, SimCall call, out string note)
    {
        switch (call.Op)
        {
            case ProtocolNames.Action:
                return Forward(call, c =>
                {
                    if (Refusal(c) is { } why)
                    {
                        return (ParticipantReply.Declined(why), false);
                    }

                    foreach (var (sku, qty) in c.Items)
                    {
                        Available[sku] -= qty;
                        Sold[sku] += qty;
                    }

                    return (ParticipantReply.Ok("""{"reserved":true}"""), true);
                }, out note);
            case ProtocolNames.Compensate:
                return Backward(call, c =>
                {
                    foreach (var (sku, qty) in c.Items)
                    {
                        Available[sku] += qty;
                        Sold[sku] -= qty;
                    }

                    return ParticipantReply.Ok("""{"released":true}""");
                }, out note);
            default:
                return UnknownOp(out note);
        }
    }

    protected override string? Refusal(Checkout checkout)
    {
        foreach (var (sku, qty) in checkout.Items)
        {
            if (Available[sku] < qty)
            {
                return $"out of stock: {sku}";
            }
        }

        return null;
    }

    protected override void Reserve(Checkout checkout)
    {
        foreach (var (sku, qty) in checkout.Items)
        {
            Available[sku] -= qty;
            HeldStock[sku] += qty;
        }
    }

    protected override void Capture(Checkout checkout)
    {
        foreach (var (sku, qty) in checkout.Items)
        {
            HeldStock[sku] -= qty;
            Sold[sku] += qty;
        }
    }

    protected override void Release(Checkout checkout)
    {
        foreach (var (sku, qty) in checkout.Items)
        {
            HeldStock[sku] -= qty;
            Available[sku] += qty;
        }
    }
}

/// <summary>
/// A consumer of two-phase messages: <c>loyalty</c> awards points, <c>ledger</c> records the charge.
/// Deliveries come at least once; the barrier (on the Idempotency-Key) applies each once.
/// </summary>
internal sealed class MessageConsumer(string name, SimBarrier barrier, EffectLedger ledger, IReadOnlyDictionary<string, Checkout> checkouts)
    : ShopService(name, barrier, ledger, checkouts)
{
    /// <summary>Per customer: loyalty points, or recorded charges (cents).</summary>
    public Dictionary<string, long> Totals { get; } = new(StringComparer.Ordinal);

    protected override ParticipantReply HandleOther(Checkout checkout, SimCall call, out string note)
    {
        if (call.Op != ProtocolNames.Action || checkout.Protocol != Protocol.Msg)
        {
            return UnknownOp(out note);
        }

        return Forward(call, c =>
        {
            Totals[c.Customer] = Totals.GetValueOrDefault(c.Customer) + (Name == "loyalty" ? c.Points : c.AmountCents);
            return (ParticipantReply.Ok("""{"recorded":true}"""), true);
        }, out note);
    }

    protected override void Reserve(Checkout checkout) => throw new InvalidOperationException("a message consumer holds nothing");

    protected override void Capture(Checkout checkout) => throw new InvalidOperationException("a message consumer holds nothing");

    protected override void Release(Checkout checkout) => throw new InvalidOperationException("a message consumer holds nothing");
}
