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
    DateTimeOffset UpdatedAt)
{
    public OrderView ToView() => new(OrderId, Gid, CustomerId, Money.FromCents(AmountCents), Items, Status, Reason, CreatedAt, UpdatedAt);
}

/// <summary>The stored idempotency record of a checkout: the first answer, replayed for the same key.</summary>
internal sealed record IdempotencyRecord(string Key, string Fingerprint, string OrderId, int StatusCode, string Body);

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
            submit_state TEXT NOT NULL CHECK (submit_state IN ('unsent', 'accepted', 'rejected')),
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS orders_unsent ON orders (created_at) WHERE submit_state = 'unsent';
        CREATE TABLE IF NOT EXISTS idempotency_keys (
            key TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            order_id TEXT NOT NULL REFERENCES orders (order_id),
            status_code INTEGER NOT NULL,
            body TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        """;

    private const string Columns = "order_id, gid, customer_id, amount_cents, items_json, status, reason, submit_state, created_at, updated_at";

    public static async Task InsertAsync(SqliteConnection connection, SqliteTransaction transaction, OrderRow order, CancellationToken ct) =>
        await Sql.ExecuteAsync(connection, transaction,
            $"INSERT INTO orders ({Columns}) VALUES ($id, $gid, $customer, $amount, $items, $status, $reason, $submit, $at, $at)", ct,
            ("$id", order.OrderId), ("$gid", order.Gid), ("$customer", order.CustomerId), ("$amount", order.AmountCents),
            ("$items", JsonSerializer.Serialize([.. order.Items], ShopJsonContext.Web.ListOrderItem)),
            ("$status", order.Status), ("$reason", order.Reason), ("$submit", order.SubmitState), ("$at", Sql.Timestamp(order.CreatedAt)));

    public static Task<OrderRow?> FindAsync(SqliteConnection connection, SqliteTransaction? transaction, string orderId, CancellationToken ct) =>
        FirstAsync(connection, transaction, $"SELECT {Columns} FROM orders WHERE order_id = $key", orderId, ct);

    public static Task<OrderRow?> FindByGidAsync(SqliteConnection connection, SqliteTransaction? transaction, string gid, CancellationToken ct) =>
        FirstAsync(connection, transaction, $"SELECT {Columns} FROM orders WHERE gid = $key", gid, ct);

    public static async Task<List<OrderRow>> ListAsync(SqliteConnection connection, string? status, CancellationToken ct)
    {
        await using var command = Sql.Command(connection, null,
            $"SELECT {Columns} FROM orders WHERE $status IS NULL OR status = $status ORDER BY created_at, order_id", ("$status", status));
        return await ReadAsync(command, ct);
    }

    /// <summary>Orders whose saga may never have reached the coordinator, created before <paramref name="before"/>.</summary>
    public static async Task<List<OrderRow>> UnsentAsync(SqliteConnection connection, DateTimeOffset before, CancellationToken ct)
    {
        await using var command = Sql.Command(connection, null,
            $"SELECT {Columns} FROM orders WHERE submit_state = 'unsent' AND created_at < $before ORDER BY created_at LIMIT 100",
            ("$before", Sql.Timestamp(before)));
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

    public static async Task<IdempotencyRecord?> FindKeyAsync(SqliteConnection connection, SqliteTransaction transaction, string key, CancellationToken ct)
    {
        await using var command = Sql.Command(connection, transaction,
            "SELECT key, fingerprint, order_id, status_code, body FROM idempotency_keys WHERE key = $key", ("$key", key));
        await using var reader = await command.ExecuteReaderAsync(ct);
        return await reader.ReadAsync(ct)
            ? new IdempotencyRecord(reader.GetString(0), reader.GetString(1), reader.GetString(2), reader.GetInt32(3), reader.GetString(4))
            : null;
    }

    public static Task<int> InsertKeyAsync(SqliteConnection connection, SqliteTransaction transaction, IdempotencyRecord record, DateTimeOffset now, CancellationToken ct) =>
        Sql.ExecuteAsync(connection, transaction,
            "INSERT INTO idempotency_keys (key, fingerprint, order_id, status_code, body, created_at) VALUES ($key, $fp, $order, $status, $body, $at)", ct,
            ("$key", record.Key), ("$fp", record.Fingerprint), ("$order", record.OrderId), ("$status", record.StatusCode),
            ("$body", record.Body), ("$at", Sql.Timestamp(now)));

    /// <summary>Replaces the stored answer of every key of an order (after the coordinator refused its saga).</summary>
    public static Task<int> SetKeyResponseAsync(SqliteConnection connection, SqliteTransaction transaction, string orderId, int status, string body, CancellationToken ct) =>
        Sql.ExecuteAsync(connection, transaction,
            "UPDATE idempotency_keys SET status_code = $status, body = $body WHERE order_id = $order", ct,
            ("$status", status), ("$body", body), ("$order", orderId));

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
                Sql.ParseTimestamp(reader.GetString(8)), Sql.ParseTimestamp(reader.GetString(9))));
        }

        return rows;
    }
}
