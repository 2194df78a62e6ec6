using System.Text.Json;
using System.Text.Json.Serialization;

namespace Shop;

// The JSON shapes of the three services. Request bodies have nullable members so that a missing
// field is reported by name (400) rather than failing deserialization.

/// <summary>Body of <c>POST /checkout</c>.</summary>
internal sealed class CheckoutRequest
{
    public string? CustomerId { get; set; }

    public List<CheckoutItem?>? Items { get; set; }

    public string? Protocol { get; set; }
}

internal sealed class CheckoutItem
{
    public string? Sku { get; set; }

    public int? Qty { get; set; }
}

internal sealed record CheckoutResponse(string OrderId, string Gid, string Status);

internal sealed record OrderItem(string Sku, int Qty);

internal sealed record OrderView(
    string OrderId,
    string Gid,
    string CustomerId,
    decimal Amount,
    IReadOnlyList<OrderItem> Items,
    string Status,
    string? Reason,
    string Protocol,
    DateTimeOffset CreatedAt,
    DateTimeOffset UpdatedAt,
    bool Processing,
    string? ProcessingGid);

internal sealed record OrderListView(IReadOnlyList<OrderView> Orders);

/// <summary>The transaction's payload, given to every branch under every protocol: <c>{orderId, customerId, items, amount}</c>.</summary>
internal sealed class OrderPayload
{
    /// <summary>The payload of a branch call, or null when it is not an object of this shape.</summary>
    public static OrderPayload? Read(JsonElement payload)
    {
        try
        {
            return payload.ValueKind == JsonValueKind.Object ? payload.Deserialize(ShopJsonContext.Web.OrderPayload) : null;
        }
        catch (JsonException)
        {
            return null;
        }
    }

    public string? OrderId { get; set; }

    public string? CustomerId { get; set; }

    public List<OrderItem?>? Items { get; set; }

    public decimal? Amount { get; set; }
}

/// <summary>2xx answer of a branch call that did nothing on purpose (a late action, a null compensation).</summary>
internal sealed record BranchSkipped(string Gid, string Branch, string Op, bool Skipped, string Reason);

internal sealed record OrderBranchResult(string OrderId, string Status, string? Reason);

/// <summary>A wallet: <c>balance</c> is what the customer can spend, <c>held</c> what transactions in flight hold (TCC, 2PC, 3PC), <c>lockedBy</c> the prepared 2PC/3PC transaction that locks the row.</summary>
internal sealed record WalletView(string CustomerId, decimal Balance, decimal Held, decimal Limit, string? LockedBy = null);

internal sealed record WalletListView(IReadOnlyList<WalletView> Wallets);

internal sealed record LedgerEntryView(long Id, string Gid, string Kind, decimal Amount, DateTimeOffset At);

internal sealed record LedgerView(string CustomerId, IReadOnlyList<LedgerEntryView> Entries);

/// <summary>Result of a payment branch: <c>outcome</c> is debited, refunded, held, captured, released, already-... .</summary>
internal sealed record PaymentResult(string Gid, string CustomerId, decimal Amount, decimal Balance, decimal Held, string Outcome);

/// <summary>
/// A SKU's stock: <c>available + held + sold == initial</c>. <c>held</c> is what transactions in
/// flight hold (any protocol); <c>lockedBy</c> the prepared 2PC/3PC transaction that locks the row.
/// </summary>
internal sealed record StockView(string Sku, int Initial, int Available, int Held, int Sold, string? LockedBy = null);

internal sealed record StockListView(IReadOnlyList<StockView> Items);

/// <summary>What one transaction holds of one SKU: <c>state</c> is held, sold or released.</summary>
internal sealed record HoldView(string Gid, string Sku, int Qty, string State, DateTimeOffset At, DateTimeOffset? SettledAt);

internal sealed record HoldListView(string Sku, IReadOnlyList<HoldView> Holds);

/// <summary>Result of an inventory branch: <c>outcome</c> is held, sold, released or already-... .</summary>
internal sealed record InventoryResult(string Gid, string Outcome, IReadOnlyList<OrderItem> Items);

/// <summary>Body of <c>POST /_faults</c>.</summary>
internal sealed class FaultRuleRequest
{
    public string? Path { get; set; }

    public int? FailTimes { get; set; }

    public int? Status { get; set; }

    public int? DelayMs { get; set; }

    /// <summary>Only for <c>/checkout</c>: the next checkout that stores an order kills the process after the commit, before its answer.</summary>
    public bool? KillAfterCommit { get; set; }

    /// <summary>A message hold instead of a path rule: the event type whose next message is held.</summary>
    public string? MessageType { get; set; }

    /// <summary>Hold the next delivery of <see cref="MessageType"/> to this service after its inbox transaction committed, before the transport is told.</summary>
    public bool? HoldAfterCommit { get; set; }

    /// <summary>Hold this service's relay after the transport took the next message of <see cref="MessageType"/>, before its outbox row is marked sent.</summary>
    public bool? HoldAfterSend { get; set; }
}

internal sealed record FaultRuleView(string Path, int FailTimes, int Status, int DelayMs, bool KillAfterCommit = false);

internal sealed record FaultRulesView(IReadOnlyList<FaultRuleView> Rules, IReadOnlyList<Infrastructure.MessageHoldView> Holds);

internal sealed record CallCountView(string Path, long Calls, long Applied);

internal sealed record CallCountsView(IReadOnlyList<CallCountView> Paths);

internal sealed record HealthView(string Status, string Service);

/// <summary>Source-generated JSON of the Shop services (Web defaults: camelCase).</summary>
[JsonSourceGenerationOptions(JsonSerializerDefaults.Web)]
[JsonSerializable(typeof(CheckoutRequest))]
[JsonSerializable(typeof(CheckoutResponse))]
[JsonSerializable(typeof(List<OrderItem>))]
[JsonSerializable(typeof(OrderView))]
[JsonSerializable(typeof(OrderListView))]
[JsonSerializable(typeof(OrderPayload))]
[JsonSerializable(typeof(BranchSkipped))]
[JsonSerializable(typeof(OrderBranchResult))]
[JsonSerializable(typeof(WalletView))]
[JsonSerializable(typeof(WalletListView))]
[JsonSerializable(typeof(LedgerView))]
[JsonSerializable(typeof(PaymentResult))]
[JsonSerializable(typeof(StockView))]
[JsonSerializable(typeof(StockListView))]
[JsonSerializable(typeof(HoldListView))]
[JsonSerializable(typeof(InventoryResult))]
[JsonSerializable(typeof(FaultRuleRequest))]
[JsonSerializable(typeof(FaultRulesView))]
[JsonSerializable(typeof(CallCountView))]
[JsonSerializable(typeof(CallCountsView))]
[JsonSerializable(typeof(HealthView))]
[JsonSerializable(typeof(Shop.Choreography.ChoreographyPayload))]
internal sealed partial class ShopJsonContext : JsonSerializerContext
{
    /// <summary>
    /// The context the services use: Web defaults (camelCase), but HTML-sensitive characters
    /// (' + &lt; &gt; &amp;) are written as they are rather than as \uXXXX escapes. These are JSON APIs,
    /// never embedded in HTML, and their bodies are read by people with curl.
    /// </summary>
    public static ShopJsonContext Web { get; } = new(new JsonSerializerOptions(JsonSerializerDefaults.Web)
    {
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    });
}
