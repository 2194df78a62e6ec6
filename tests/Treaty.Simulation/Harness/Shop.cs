using System.Globalization;
using Treaty.AspNetCore.Barrier;

namespace Treaty.Simulation.Harness;

/// <summary>One checkout: what the client submits and every participant reads from the payload.</summary>
internal sealed record Checkout(string Gid, string Customer, long AmountCents, IReadOnlyList<(string Sku, int Qty)> Items)
{
    public string PayloadJson =>
        $$"""{"customer":"{{Customer}}","amount":{{AmountCents.ToString(CultureInfo.InvariantCulture)}},"items":[{{string.Join(",", Items.Select(i => $$"""{"sku":"{{i.Sku}}","qty":{{i.Qty.ToString(CultureInfo.InvariantCulture)}}}"""))}}]}""";
}

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
        public int Applied { get; set; }

        public int Compensated { get; set; }

        public int Declined { get; set; }

        /// <summary>An effect landed after its compensation had already run (a hanging action).</summary>
        public int AppliedAfterCompensation { get; set; }

        public override string ToString() =>
            $"applied={Applied} compensated={Compensated} declined={Declined}{(AppliedAfterCompensation > 0 ? $" late={AppliedAfterCompensation}" : "")}";
    }
}

/// <summary>The durable state of one Shop service: its business tables and its barrier rows.</summary>
internal abstract class ShopService(string name, SimBarrier barrier, EffectLedger ledger, IReadOnlyDictionary<string, Checkout> checkouts)
{
    public string Name { get; } = name;

    public SimBarrier Barrier { get; } = barrier;

    protected EffectLedger Ledger { get; } = ledger;

    protected IReadOnlyDictionary<string, Checkout> Checkouts { get; } = checkouts;

    /// <summary>Anything a correct coordinator could never make the service see.</summary>
    public List<string> Anomalies { get; } = [];

    /// <summary>
    /// Applies one call atomically (one scheduler event = one local transaction): <paramref name="wireOp"/>
    /// is the op the coordinator sent (action, compensate), <paramref name="op"/> the endpoint it was sent to.
    /// </summary>
    public abstract ParticipantReply Handle(string gid, string branch, string wireOp, string op, out string note);

    protected ParticipantReply Forward(string gid, string branch, string wireOp, Func<Checkout, (ParticipantReply, bool)> body, out string note)
    {
        var applied = false;
        var reply = Barrier.Execute(gid, branch, wireOp, () =>
        {
            var checkout = Checkouts[gid];
            var counts = Ledger.Of(gid, branch);
            (var answer, applied) = body(checkout);
            if (applied)
            {
                counts.Applied++;
                if (counts.Compensated > 0 || Compensations.Contains((gid, branch)))
                {
                    counts.AppliedAfterCompensation++;
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

    protected ParticipantReply Backward(string gid, string branch, string wireOp, Func<Checkout, ParticipantReply> undo, out string note)
    {
        var reply = Barrier.Execute(gid, branch, wireOp, () =>
        {
            Ledger.Of(gid, branch).Compensated++;
            return undo(Checkouts[gid]);
        }, out var decision);
        Compensations.Add((gid, branch));
        note = Note(decision, "compensated");
        return reply;
    }

    private static string Note(BarrierDecision decision, string ran) => decision switch
    {
        BarrierDecision.ReplayStored => "duplicate: first answer replayed",
        BarrierDecision.NullCompensation => "null compensation",
        BarrierDecision.SkipHanging => "hanging action refused (already compensated)",
        _ => ran,
    };

    /// <summary>Compensation calls that reached this service, applied or not (to spot hanging actions).</summary>
    private HashSet<(string Gid, string Branch)> Compensations { get; } = [];
}

internal enum OrderStatus
{
    Pending,
    Confirmed,
    Cancelled,
}

/// <summary>Order: create (PENDING), cancel, confirm (the pivot).</summary>
internal sealed class OrderService(SimBarrier barrier, EffectLedger ledger, IReadOnlyDictionary<string, Checkout> checkouts)
    : ShopService("order", barrier, ledger, checkouts)
{
    public Dictionary<string, OrderStatus> Orders { get; } = new(StringComparer.Ordinal);

    /// <summary>The idempotency records of <c>POST /checkout</c>, by key (the kit's table).</summary>
    public Dictionary<string, IdempotencyRow> IdempotencyKeys { get; } = new(StringComparer.Ordinal);

    /// <summary>Orders placed by a checkout, committed with its stored response: order id (= gid) → idempotency key.</summary>
    public Dictionary<string, string> Placed { get; } = new(StringComparer.Ordinal);

    public override ParticipantReply Handle(string gid, string branch, string wireOp, string op, out string note)
    {
        switch (op)
        {
            case "create":
                return Forward(gid, branch, wireOp, c =>
                {
                    if (Orders.ContainsKey(gid))
                    {
                        Anomalies.Add($"order {gid} created twice");
                    }

                    Orders[gid] = OrderStatus.Pending;
                    return (ParticipantReply.Ok($$"""{"orderId":"{{gid}}","status":"PENDING"}"""), true);
                }, out note);
            case "cancel":
                return Backward(gid, branch, wireOp, c =>
                {
                    if (Orders.GetValueOrDefault(gid) == OrderStatus.Confirmed)
                    {
                        Anomalies.Add($"order {gid} cancelled after it was confirmed");
                    }

                    Orders[gid] = OrderStatus.Cancelled;
                    return ParticipantReply.Ok("""{"status":"CANCELLED"}""");
                }, out note);
            case "confirm":
                return Forward(gid, branch, wireOp, c =>
                {
                    if (!Orders.TryGetValue(gid, out var status) || status != OrderStatus.Pending)
                    {
                        return (ParticipantReply.Declined($"order is {(Orders.ContainsKey(gid) ? Orders[gid].ToString() : "missing")}"), false);
                    }

                    Orders[gid] = OrderStatus.Confirmed;
                    return (ParticipantReply.Ok("""{"status":"CONFIRMED"}"""), true);
                }, out note);
            default:
                note = "unknown op";
                return new ParticipantReply(404, "no such operation");
        }
    }
}

/// <summary>Payment: the customer wallets. Reserve debits or declines; refund credits back.</summary>
internal sealed class PaymentService : ShopService
{
    public PaymentService(SimBarrier barrier, EffectLedger ledger, IReadOnlyDictionary<string, Checkout> checkouts)
        : base("payment", barrier, ledger, checkouts)
    {
        foreach (var (customer, balance, limit) in Customers)
        {
            Balances[customer] = balance;
            Limits[customer] = limit;
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

    public override ParticipantReply Handle(string gid, string branch, string wireOp, string op, out string note)
    {
        switch (op)
        {
            case "reserve":
                return Forward(gid, branch, wireOp, c =>
                {
                    if (c.AmountCents > Limits[c.Customer])
                    {
                        return (ParticipantReply.Declined("over the per-order limit"), false);
                    }

                    if (c.AmountCents > Balances[c.Customer])
                    {
                        return (ParticipantReply.Declined("insufficient funds"), false);
                    }

                    Balances[c.Customer] -= c.AmountCents;
                    return (ParticipantReply.Ok("""{"charged":true}"""), true);
                }, out note);
            case "refund":
                return Backward(gid, branch, wireOp, c =>
                {
                    Balances[c.Customer] += c.AmountCents;
                    return ParticipantReply.Ok("""{"refunded":true}""");
                }, out note);
            default:
                note = "unknown op";
                return new ParticipantReply(404, "no such operation");
        }
    }
}

/// <summary>Inventory: stock per SKU. Reserve moves stock to reserved or fails; release moves it back.</summary>
internal sealed class InventoryService : ShopService
{
    public InventoryService(SimBarrier barrier, EffectLedger ledger, IReadOnlyDictionary<string, Checkout> checkouts)
        : base("inventory", barrier, ledger, checkouts)
    {
        foreach (var (sku, _, stock) in Catalogue)
        {
            Available[sku] = stock;
            Reserved[sku] = 0;
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

    public Dictionary<string, int> Reserved { get; } = new(StringComparer.Ordinal);

    public override ParticipantReply Handle(string gid, string branch, string wireOp, string op, out string note)
    {
        switch (op)
        {
            case "reserve":
                return Forward(gid, branch, wireOp, c =>
                {
                    foreach (var (sku, qty) in c.Items)
                    {
                        if (Available[sku] < qty)
                        {
                            return (ParticipantReply.Declined($"out of stock: {sku}"), false);
                        }
                    }

                    foreach (var (sku, qty) in c.Items)
                    {
                        Available[sku] -= qty;
                        Reserved[sku] += qty;
                    }

                    return (ParticipantReply.Ok("""{"reserved":true}"""), true);
                }, out note);
            case "release":
                return Backward(gid, branch, wireOp, c =>
                {
                    foreach (var (sku, qty) in c.Items)
                    {
                        Available[sku] += qty;
                        Reserved[sku] -= qty;
                    }

                    return ParticipantReply.Ok("""{"released":true}""");
                }, out note);
            default:
                note = "unknown op";
                return new ParticipantReply(404, "no such operation");
        }
    }
}
