using System.Collections.Frozen;

namespace Shop;

/// <summary>
/// The seed data of DESIGN.md. The Order service owns the prices (it computes the totals), the
/// Inventory service the stock and the Payment service the wallets; they share this file only
/// because it is one sample.
/// </summary>
internal static class Catalogue
{
    public static FrozenDictionary<string, Product> Products { get; } = new Dictionary<string, Product>(StringComparer.Ordinal)
    {
        ["book"] = new("book", PriceCents: 25_00, InitialStock: 100),
        ["laptop"] = new("laptop", PriceCents: 1500_00, InitialStock: 5),
        ["pen"] = new("pen", PriceCents: 2_00, InitialStock: 0),
    }.ToFrozenDictionary(StringComparer.Ordinal);

    public static IReadOnlyList<Customer> Customers { get; } =
    [
        new("alice", BalanceCents: 2000_00, LimitCents: 1000_00),
        new("bob", BalanceCents: 50_00, LimitCents: 1000_00),
    ];
}

internal sealed record Product(string Sku, long PriceCents, int InitialStock);

internal sealed record Customer(string Id, long BalanceCents, long LimitCents);
