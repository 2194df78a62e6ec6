using System.Text.Json;
using Microsoft.Data.Sqlite;
using Shop.Infrastructure;

namespace Shop.Order;

/// <summary>The order states a customer sees.</summary>
internal static class OrderStatus
{
    public const string Pending = "PENDING";
    public const string Confirmed = "CONFIRMED";
    public const string Cancelled = "CANCELLED";

    /// <summary>The answer of a checkout: the order exists and its transaction runs.</summary>
    public const string Processing = "PROCESSING";
}

/// <summary>Whether the order's saga reached the coordinator.</summary>
internal static class SubmitState
{
    /// <summary>Not known to be accepted yet (the coordinator was unreachable): submitted again later.</summary>
    public const string Unsent = "unsent";
    public const string Accepted = "accepted";
    /// <summary>The coordinator refused it for good; the order was cancelled.</summary>
    public const string Rejected = "rejected";
}

internal sealed record OrderRow(
    string OrderId,
    string Gid,
    string CustomerId,
    long AmountCents,
    IReadOnlyList<OrderItem> Items,
    string Status,
    string? Reason,
    string SubmitState,
    DateTimeOffset CreatedAt,
    DateTimeOffset UpdatedAt,
    string Protocol = "saga",
    string? ProcessingGid = null)
{
    /// <summary>
    /// The view: a PENDING order whose semantic lock <c>order/{id}</c> is held shows
    /// <c>processing: true</c> (and the gid holding it): its saga is still deciding, so the
    /// money and stock it shows are not final.
    /// </summary>
    public OrderView ToView() => new(OrderId, Gid, CustomerId, Money.FromCents(AmountCents), Items, Status, Reason, Protocol, CreatedAt, UpdatedAt,
        ProcessingGid is not null, ProcessingGid);
}

internal static class OrderStore
{
    public const string Schema = """
        CREATE TABLE IF NOT EXISTS orders (
            order_id TEXT PRIMARY KEY,
            gid TEXT NOT NULL UNIQUE,
            customer_id TEXT NOT NULL,
            amount_cents INTEGER NOT NULL,
            items_json TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'CANCELLED')),
            reason TEXT,
            protocol TEXT NOT NULL DEFAULT 'saga',
            submit_state TEXT NOT NULL CHECK (submit_state IN ('unsent', 'accepted', 'rejected')),
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS orders_unsent ON orders (created_at) WHERE submit_state = 'unsent';
        CREATE INDEX IF NOT EXISTS orders_pending ON orders (updated_at) WHERE status = 'PENDING';
        """;

    private const string Columns = "order_id, gid, customer_id, amount_cents, items_json, status, reason, submit_state, created_at, updated_at, protocol";

    // The order's semantic lock (treaty_semantic_locks, created by the kit at start), read with the row.
    private const string SelectColumns = Columns +
        ", (SELECT l.gid FROM treaty_semantic_locks l WHERE l.resource = 'order/' || orders.order_id) AS processing_gid";

    /// <summary>The semantic lock of an order, held by its saga's gid from checkout until confirm or cancel.</summary>
    public static string LockOf(string orderId) => "order/" + orderId;

    public static async Task InsertAsync(SqliteConnection connection, SqliteTransaction transaction, OrderRow order, CancellationToken ct) =>
        await Sql.ExecuteAsync(connection, transaction,
            $"INSERT INTO orders ({Columns}) VALUES ($id, $gid, $customer, $amount, $items, $status, $reason, $submit, $at, $at, $protocol)", ct,
            ("$id", order.OrderId), ("$gid", order.Gid), ("$customer", order.CustomerId), ("$amount", order.AmountCents),
            ("$items", JsonSerializer.Serialize([.. order.Items], ShopJsonContext.Web.ListOrderItem)),
            ("$status", order.Status), ("$reason", order.Reason), ("$submit", order.SubmitState), ("$at", Sql.Timestamp(order.CreatedAt)), ("$protocol", order.Protocol));

    public static Task<OrderRow?> FindAsync(SqliteConnection connection, SqliteTransaction? transaction, string orderId, CancellationToken ct) =>
        FirstAsync(connection, transaction, $"SELECT {SelectColumns} FROM orders WHERE order_id = $key", orderId, ct);

    public static Task<OrderRow?> FindByGidAsync(SqliteConnection connection, SqliteTransaction? transaction, string gid, CancellationToken ct) =>
        FirstAsync(connection, transaction, $"SELECT {SelectColumns} FROM orders WHERE gid = $key", gid, ct);

    public static async Task<List<OrderRow>> ListAsync(SqliteConnection connection, string? status, CancellationToken ct)
    {
        await using var command = Sql.Command(connection, null,
            $"SELECT {SelectColumns} FROM orders WHERE $status IS NULL OR status = upper($status) ORDER BY created_at, order_id", ("$status", status));
        return await ReadAsync(command, ct);
    }

    /// <summary>Orders whose saga may never have reached the coordinator, created before <paramref name="before"/>.</summary>
    public static async Task<List<OrderRow>> UnsentAsync(SqliteConnection connection, DateTimeOffset before, CancellationToken ct)
    {
        await using var command = Sql.Command(connection, null,
            $"SELECT {SelectColumns} FROM orders WHERE submit_state = 'unsent' AND created_at <= $before ORDER BY created_at LIMIT 100",
            ("$before", Sql.Timestamp(before)));
        return await ReadAsync(command, ct);
    }

    /// <summary>Accepted orders still PENDING, untouched since before <paramref name="before"/>: their saga may have ended without telling this service.</summary>
    public static async Task<List<OrderRow>> StalePendingAsync(SqliteConnection connection, DateTimeOffset before, int limit, CancellationToken ct)
    {
        await using var command = Sql.Command(connection, null,
            $"SELECT {SelectColumns} FROM orders WHERE status = 'PENDING' AND submit_state = 'accepted' AND updated_at < $before ORDER BY updated_at LIMIT $limit",
            ("$before", Sql.Timestamp(before)), ("$limit", limit));
        return await ReadAsync(command, ct);
    }

    public static Task<int> SetStatusAsync(SqliteConnection connection, SqliteTransaction transaction, string orderId, string status, string? reason, DateTimeOffset now, CancellationToken ct) =>
        Sql.ExecuteAsync(connection, transaction,
            "UPDATE orders SET status = $status, reason = $reason, updated_at = $at WHERE order_id = $id", ct,
            ("$status", status), ("$reason", reason), ("$at", Sql.Timestamp(now)), ("$id", orderId));

    public static Task<int> SetSubmitStateAsync(SqliteConnection connection, SqliteTransaction transaction, string orderId, string state, DateTimeOffset now, CancellationToken ct) =>
        Sql.ExecuteAsync(connection, transaction,
            "UPDATE orders SET submit_state = $state, updated_at = $at WHERE order_id = $id AND submit_state = 'unsent'", ct,
            ("$state", state), ("$at", Sql.Timestamp(now)), ("$id", orderId));

    private static async Task<OrderRow?> FirstAsync(SqliteConnection connection, SqliteTransaction? transaction, string sql, string key, CancellationToken ct)
    {
        await using var command = Sql.Command(connection, transaction, sql, ("$key", key));
        var rows = await ReadAsync(command, ct);
        return rows.Count == 0 ? null : rows[0];
    }

    private static async Task<List<OrderRow>> ReadAsync(SqliteCommand command, CancellationToken ct)
    {
        await using var reader = await command.ExecuteReaderAsync(ct);
        var rows = new List<OrderRow>();
        while (await reader.ReadAsync(ct))
        {
            var items = JsonSerializer.Deserialize(reader.GetString(4), ShopJsonContext.Web.ListOrderItem) ?? [];
            rows.Add(new OrderRow(
                reader.GetString(0), reader.GetString(1), reader.GetString(2), reader.GetInt64(3), items,
                reader.GetString(5), reader.IsDBNull(6) ? null : reader.GetString(6), reader.GetString(7),
                Sql.ParseTimestamp(reader.GetString(8)), Sql.ParseTimestamp(reader.GetString(9)),
                reader.GetString(10), reader.IsDBNull(11) ? null : reader.GetString(11)));
        }

        return rows;
    }
}
