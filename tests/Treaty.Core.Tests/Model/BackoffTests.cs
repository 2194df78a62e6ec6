using FsCheck;
using FsCheck.Fluent;
using Treaty.Core.Model;

namespace Treaty.Core.Tests.Model;

public sealed class BackoffTests
{
    private const double Tolerance = 0.001; // ms: TimeSpan keeps ticks (0.0001 ms)

    private static readonly Config Quick = Config.QuickThrowOnFailure.WithMaxTest(500);

    private static Gen<RetryPolicy> Policies =>
        from initial in Gen.Choose(0, 10_000)
        from max in Gen.Choose(0, 120_000)
        from attempts in Gen.Choose(1, 20)
        select new RetryPolicy(attempts, initial, max);

    private static Gen<double> Random01 => Gen.Choose(0, 1_000_000).Select(i => i / 1_000_001.0);

    private static double Exponential(int failedAttempts, RetryPolicy policy) =>
        Math.Min(policy.MaxDelayMs, Math.Min(policy.InitialDelayMs, policy.MaxDelayMs) * Math.Pow(2, Math.Min(failedAttempts - 1, 62)));

    [Theory]
    [InlineData(1, 0.0, 100)]
    [InlineData(1, 0.5, 150)]
    [InlineData(2, 0.5, 300)]
    [InlineData(3, 0.0, 400)]
    [InlineData(8, 0.5, 19_200)] // 200 * 2^7 = 25 600
    [InlineData(9, 0.5, 22_500)] // 200 * 2^8 = 51 200, capped at 30 000
    [InlineData(200, 0.0, 15_000)]
    public void Delay_DefaultPolicy_IsHalfFixedHalfJitteredAndCapped(int failedAttempts, double random, double expectedMs) =>
        Backoff.Delay(failedAttempts, RetryPolicy.Default, random).TotalMilliseconds.ShouldBe(expectedMs, Tolerance);

    [Fact]
    public void Delay_ZeroAttempts_Throws() =>
        Should.Throw<ArgumentOutOfRangeException>(() => Backoff.Delay(0, RetryPolicy.Default, 0.5));

    [Fact]
    public void Delay_ForFixedRandom_NeverDecreasesWithMoreAttempts() =>
        Prop.ForAll(Policies.ToArbitrary(), Random01.ToArbitrary(), Gen.Choose(1, 80).ToArbitrary(), (policy, random, attempts) =>
            Backoff.Delay(attempts, policy, random) <= Backoff.Delay(attempts + 1, policy, random))
        .Check(Quick);

    [Fact]
    public void Delay_IsNeverAboveTheCap() =>
        Prop.ForAll(Policies.ToArbitrary(), Random01.ToArbitrary(), Gen.Choose(1, 1000).ToArbitrary(), (policy, random, attempts) =>
            Backoff.Delay(attempts, policy, random).TotalMilliseconds <= policy.MaxDelayMs + Tolerance)
        .Check(Quick);

    [Fact]
    public void Delay_IsNeverBelowHalfTheExponentialValue() =>
        Prop.ForAll(Policies.ToArbitrary(), Random01.ToArbitrary(), Gen.Choose(1, 1000).ToArbitrary(), (policy, random, attempts) =>
            Backoff.Delay(attempts, policy, random).TotalMilliseconds >= (Exponential(attempts, policy) / 2) - Tolerance)
        .Check(Quick);

    [Fact]
    public void Delay_IsNeverAboveTheExponentialValue() =>
        Prop.ForAll(Policies.ToArbitrary(), Random01.ToArbitrary(), Gen.Choose(1, 1000).ToArbitrary(), (policy, random, attempts) =>
            Backoff.Delay(attempts, policy, random).TotalMilliseconds <= Exponential(attempts, policy) + Tolerance)
        .Check(Quick);

    [Fact]
    public void Delay_GrowsWithTheRandomValue() =>
        Prop.ForAll(Policies.ToArbitrary(), Gen.Two(Random01).ToArbitrary(), Gen.Choose(1, 40).ToArbitrary(), (policy, randoms, attempts) =>
            Backoff.Delay(attempts, policy, Math.Min(randoms.Item1, randoms.Item2)) <= Backoff.Delay(attempts, policy, Math.Max(randoms.Item1, randoms.Item2)))
        .Check(Quick);
}

internal static class PropertyExtensions
{
    public static void Check(this Property property, Config config) => FsCheck.Check.One(config, property);
}
