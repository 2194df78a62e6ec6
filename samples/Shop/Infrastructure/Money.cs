namespace Shop.Infrastructure;

/// <summary>Money is stored as integer cents and shown as a decimal with two places.</summary>
internal static class Money
{
    /// <summary>The largest amount accepted anywhere (10 million), far below overflow.</summary>
    public const long MaxCents = 1_000_000_000;

    public static decimal FromCents(long cents)
    {
        // Scale 2, so 1525 cents serializes as 15.25 and 150000 as 1500.00 rather than 1500.
        var magnitude = (ulong)Math.Abs(cents);
        return new decimal((int)(magnitude & 0xFFFF_FFFF), (int)(magnitude >> 32), 0, cents < 0, 2);
    }

    /// <summary>Whole cents of a positive amount with at most two decimals, up to <see cref="MaxCents"/>.</summary>
    public static bool TryToCents(decimal amount, out long cents)
    {
        cents = 0;
        if (amount <= 0 || amount > MaxCents / 100)
        {
            return false;
        }

        var scaled = amount * 100;
        if (scaled != decimal.Truncate(scaled))
        {
            return false;
        }

        cents = (long)scaled;
        return true;
    }
}
