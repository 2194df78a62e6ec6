using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Data.Sqlite;
using Shop.Infrastructure;

namespace Shop.Inventory;

/// <summary>What readers see of the stock: <c>GET /stock</c>, <c>GET /stock/{sku}</c>, <c>GET /stock/{sku}/holds</c>.</summary>
internal static class StockQueries
{
    private const string Columns = "sku, initial, available, held, sold, locked_by";

    public static void Map(WebApplication app, ShopDatabase database)
    {
        app.MapGet("/stock", async (CancellationToken ct) =>
        {
            var items = await database.ReadAsync(async connection =>
            {
                await using var command = Sql.Command(connection, null, $"SELECT {Columns} FROM stock ORDER BY sku");
                return await ReadAsync(command, ct);
            }, ct);
            return Results.Json(new StockListView(items), ShopJsonContext.Web.StockListView);
        });

        app.MapGet("/stock/{sku}", async (string sku, CancellationToken ct) =>
        {
            var stock = await database.ReadAsync(connection => FindAsync(connection, null, sku, ct), ct);
            return stock is null ? Problems.NotFound($"No SKU '{sku}'.") : Results.Json(stock, ShopJsonContext.Web.StockView);
        });

        app.MapGet("/stock/{sku}/holds", async (string sku, CancellationToken ct) =>
        {
            var list = await database.ReadAsync(async connection =>
            {
                if (await FindAsync(connection, null, sku, ct) is null)
                {
                    return null;
                }

                await using var command = Sql.Command(connection, null,
                    "SELECT gid, sku, qty, state, at, settled_at FROM holds WHERE sku = $sku ORDER BY at, gid", ("$sku", sku));
                await using var reader = await command.ExecuteReaderAsync(ct);
                var holds = new List<HoldView>();
                while (await reader.ReadAsync(ct))
                {
                    holds.Add(new HoldView(reader.GetString(0), reader.GetString(1), reader.GetInt32(2), reader.GetString(3),
                        Sql.ParseTimestamp(reader.GetString(4)), reader.IsDBNull(5) ? null : Sql.ParseTimestamp(reader.GetString(5))));
                }

                return new HoldListView(sku, holds);
            }, ct);
            return list is null ? Problems.NotFound($"No SKU '{sku}'.") : Results.Json(list, ShopJsonContext.Web.HoldListView);
        });
    }

    public static async Task<StockView?> FindAsync(SqliteConnection connection, SqliteTransaction? transaction, string sku, CancellationToken ct)
    {
        await using var command = Sql.Command(connection, transaction, $"SELECT {Columns} FROM stock WHERE sku = $sku", ("$sku", sku));
        var items = await ReadAsync(command, ct);
        return items.Count == 0 ? null : items[0];
    }

    private static async Task<List<StockView>> ReadAsync(SqliteCommand command, CancellationToken ct)
    {
        await using var reader = await command.ExecuteReaderAsync(ct);
        var items = new List<StockView>();
        while (await reader.ReadAsync(ct))
        {
            items.Add(new StockView(reader.GetString(0), reader.GetInt32(1), reader.GetInt32(2), reader.GetInt32(3), reader.GetInt32(4),
                reader.IsDBNull(5) ? null : reader.GetString(5)));
        }

        return items;
    }
}
