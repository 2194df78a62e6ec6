using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Data.Sqlite;
using Shop.Infrastructure;

namespace Shop.Payment;

/// <summary>What readers see of the wallets: <c>GET /wallets</c>, <c>GET /wallets/{id}</c>, <c>GET /wallets/{id}/ledger</c>.</summary>
internal static class WalletQueries
{
    private const string Columns = "customer_id, balance_cents, held_cents, limit_cents, locked_by";

    public static void Map(WebApplication app, ShopDatabase database)
    {
        app.MapGet("/wallets", async (CancellationToken ct) =>
        {
            var wallets = await database.ReadAsync(async connection =>
            {
                await using var command = Sql.Command(connection, null, $"SELECT {Columns} FROM wallets ORDER BY customer_id");
                return await ReadAsync(command, ct);
            }, ct);
            return Results.Json(new WalletListView(wallets), ShopJsonContext.Web.WalletListView);
        });

        app.MapGet("/wallets/{customerId}", async (string customerId, CancellationToken ct) =>
        {
            var wallet = await database.ReadAsync(connection => FindAsync(connection, null, customerId, ct), ct);
            return wallet is null ? Problems.NotFound($"No wallet for customer '{customerId}'.") : Results.Json(wallet, ShopJsonContext.Web.WalletView);
        });

        app.MapGet("/wallets/{customerId}/ledger", async (string customerId, CancellationToken ct) =>
        {
            var ledger = await database.ReadAsync(async connection =>
            {
                if (await FindAsync(connection, null, customerId, ct) is null)
                {
                    return null;
                }

                await using var command = Sql.Command(connection, null,
                    "SELECT id, gid, kind, amount_cents, at FROM ledger WHERE customer_id = $id ORDER BY id", ("$id", customerId));
                await using var reader = await command.ExecuteReaderAsync(ct);
                var entries = new List<LedgerEntryView>();
                while (await reader.ReadAsync(ct))
                {
                    entries.Add(new LedgerEntryView(reader.GetInt64(0), reader.GetString(1), reader.GetString(2),
                        Money.FromCents(reader.GetInt64(3)), Sql.ParseTimestamp(reader.GetString(4))));
                }

                return new LedgerView(customerId, entries);
            }, ct);
            return ledger is null ? Problems.NotFound($"No wallet for customer '{customerId}'.") : Results.Json(ledger, ShopJsonContext.Web.LedgerView);
        });
    }

    public static async Task<WalletView?> FindAsync(SqliteConnection connection, SqliteTransaction? transaction, string customerId, CancellationToken ct)
    {
        await using var command = Sql.Command(connection, transaction, $"SELECT {Columns} FROM wallets WHERE customer_id = $id", ("$id", customerId));
        var wallets = await ReadAsync(command, ct);
        return wallets.Count == 0 ? null : wallets[0];
    }

    private static async Task<List<WalletView>> ReadAsync(SqliteCommand command, CancellationToken ct)
    {
        await using var reader = await command.ExecuteReaderAsync(ct);
        var wallets = new List<WalletView>();
        while (await reader.ReadAsync(ct))
        {
            wallets.Add(new WalletView(reader.GetString(0), Money.FromCents(reader.GetInt64(1)), Money.FromCents(reader.GetInt64(2)),
                Money.FromCents(reader.GetInt64(3)), reader.IsDBNull(4) ? null : reader.GetString(4)));
        }

        return wallets;
    }
}
