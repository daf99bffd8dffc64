//! Buy-till-you-die scores of one customer: BG/NBD (Fader, Hardie and Lee, 2005) for whether
//! they still buy and how often, Gamma-Gamma (Fader, Hardie and Lee, 2005b) for how much.
//!
//! The population's parameters are fitted elsewhere (`nudgeflow fit`); each score here is a
//! closed form in the customer's own repeat orders `x`, the time `t_x` from their first to
//! their last order and their age `T` (first order to now), all in days: O(1), computed only
//! when read.

/// A population's BG/NBD and Gamma-Gamma parameters (times in days) and the horizon of
/// `expected_orders` and `clv`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Population {
    /// BG/NBD: purchase rates ~ Gamma(r, alpha) (alpha in days).
    pub r: f64,
    pub alpha: f64,
    /// BG/NBD: the chance to stop after each order ~ Beta(a, b).
    pub a: f64,
    pub b: f64,
    /// Gamma-Gamma: order values ~ Gamma(p, nu), nu ~ Gamma(q, v).
    pub p: f64,
    pub q: f64,
    pub v: f64,
    pub horizon_days: f64,
}

/// A customer's purchase history as the models read it (days).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct History {
    /// Repeat orders: orders after the first.
    pub x: f64,
    /// Days from the first order to the last.
    pub t_x: f64,
    /// Days from the first order to now (at least `t_x`).
    pub age: f64,
}

/// A population as Python passes it: `(r, alpha, a, b, p, q, v, horizon_days)`.
pub type PopulationArgs = (f64, f64, f64, f64, f64, f64, f64, f64);

impl From<PopulationArgs> for Population {
    fn from((r, alpha, a, b, p, q, v, horizon_days): PopulationArgs) -> Self {
        Self {
            r,
            alpha,
            a,
            b,
            p,
            q,
            v,
            horizon_days,
        }
    }
}

const SERIES_TOLERANCE: f64 = 1e-16;
const MAX_SERIES_TERMS: usize = 200_000;

/// Gauss's hypergeometric function 2F1(a, b; c; z) by its power series, for 0 <= z < 1
/// (and c not a non-positive integer): the terms shrink geometrically, by about z each.
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
    let (mut term, mut sum) = (1.0_f64, 1.0_f64);
    for n in 0..MAX_SERIES_TERMS {
        let k = n as f64;
        term *= (a + k) * (b + k) / ((c + k) * (k + 1.0)) * z;
        sum += term;
        if term.abs() <= SERIES_TOLERANCE * sum.abs() {
            break;
        }
    }
    sum
}

impl Population {
    /// `a`, kept off 1 where the expected orders' closed form divides by `a - 1`.
    fn a_off_one(&self) -> f64 {
        if (self.a - 1.0).abs() < 1e-9 {
            1.0 + 1e-9
        } else {
            self.a
        }
    }

    /// `a / (b + x - 1) * ((alpha + T) / (alpha + t_x))^(r + x)`, the odds of having stopped.
    fn odds_dead(&self, h: &History) -> f64 {
        if h.x <= 0.0 {
            return 0.0;
        }
        let ln = (self.a / (self.b + h.x - 1.0)).ln()
            + (self.r + h.x) * ((self.alpha + h.age) / (self.alpha + h.t_x)).ln();
        ln.exp()
    }

    /// P(alive | x, t_x, T): 1 for a customer with no repeat order yet (BG/NBD lets a customer
    /// stop only right after an order, so one who never came back cannot have stopped).
    pub fn p_alive(&self, h: &History) -> f64 {
        1.0 / (1.0 + self.odds_dead(h))
    }

    /// P(no order in the next `days` | alive): the Poisson chance of none, averaged over the
    /// rate's posterior Gamma(r + x, alpha + T).
    pub fn silent_while_alive(&self, h: &History, days: f64) -> f64 {
        ((self.alpha + h.age) / (self.alpha + h.age + days.max(0.0))).powf(self.r + h.x)
    }

    /// P(no order in the next `days`): stopped already, or alive and silent that long.
    pub fn no_order_within(&self, h: &History, days: f64) -> f64 {
        1.0 - self.p_alive(h) * (1.0 - self.silent_while_alive(h, days))
    }

    /// E[orders in the next `days` | x, t_x, T], the BG/NBD conditional expectation, with its
    /// 2F1 in Euler's form: ((a+T)/(a+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1; z) =
    /// (1-z)^(a-1) 2F1(a+b-1-r, a-1; a+b+x-1; z), z = t / (alpha+T+t), whose terms are small
    /// even for a frequent buyer (the plain form's grow like n^(r+x) before they shrink).
    pub fn expected_orders(&self, h: &History, days: f64) -> f64 {
        if days <= 0.0 {
            return 0.0;
        }
        let (r, a, b) = (self.r, self.a_off_one(), self.b);
        let c = a + b + h.x - 1.0;
        let z = days / (self.alpha + h.age + days);
        let silent = (1.0 - z).powf(a - 1.0) * hyp2f1(a + b - 1.0 - r, a - 1.0, c, z);
        c / (a - 1.0) * (1.0 - silent) / (1.0 + self.odds_dead(h))
    }

    /// The population's mean order value, p v / (q - 1).
    pub fn mean_order_value(&self) -> f64 {
        self.p * self.v / (self.q - 1.0)
    }

    /// Gamma-Gamma E[order value | x orders of mean value `mean`]: the customer's mean, shrunk
    /// towards the population's, (p v + p x mean) / (p x + q - 1); the population's for x = 0.
    pub fn expected_order_value(&self, x: f64, mean: f64) -> f64 {
        (self.p * self.v + self.p * x * mean) / (self.p * x + self.q - 1.0)
    }
}

#[cfg(feature = "python")]
pub mod python {
    use pyo3::prelude::*;

    use super::{History, Population, PopulationArgs};

    /// Gauss's hypergeometric function 2F1(a, b; c; z) for 0 <= z < 1, by its series.
    #[pyfunction]
    pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
        super::hyp2f1(a, b, c, z)
    }

    /// ``(p_alive, no_order_within(days), expected_orders(days), expected_order_value(mean))``
    /// of a history ``x``, ``t_x``, ``age`` (days), unrounded: what the features round.
    #[pyfunction]
    #[allow(clippy::too_many_arguments)]
    pub fn btyd_scores(
        population: PopulationArgs,
        x: f64,
        t_x: f64,
        age: f64,
        days: f64,
        mean: f64,
    ) -> (f64, f64, f64, f64) {
        let population = Population::from(population);
        let history = History { x, t_x, age };
        (
            population.p_alive(&history),
            population.no_order_within(&history, days),
            population.expected_orders(&history, days),
            population.expected_order_value(x, mean),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CDNOW's published BG/NBD fit, in days (alpha in weeks times 7), and Gamma-Gamma's.
    const CDNOW: Population = Population {
        r: 0.243,
        alpha: 4.414 * 7.0,
        a: 0.793,
        b: 2.426,
        p: 6.25,
        q: 3.74,
        v: 15.45,
        horizon_days: 365.0,
    };

    fn close(got: f64, expected: f64) {
        assert!(
            (got - expected).abs() <= 1e-9 * expected.abs().max(1.0),
            "{got} != {expected}"
        );
    }

    fn history(x: f64, t_x: f64, age: f64) -> History {
        History { x, t_x, age }
    }

    // Expected values: tests/btyd_reference.py (scipy.special.hyp2f1, the papers' formulas).

    #[test]
    fn hyp2f1_agrees_with_scipy() {
        close(hyp2f1(0.243, 2.426, 2.219, 0.5), 1.2070970070440417);
        close(hyp2f1(1.976, -0.207, 12.219, 0.92), 0.9661726033718799);
        close(hyp2f1(3.0, 2.5, 1.5, 0.99), 198999999.99999925);
    }

    #[test]
    fn p_alive_is_one_without_a_repeat_order_and_falls_with_silence() {
        assert_eq!(CDNOW.p_alive(&history(0.0, 0.0, 300.0)), 1.0);
        close(CDNOW.p_alive(&history(2.0, 30.0, 90.0)), 0.481307516287052);
        close(
            CDNOW.p_alive(&history(10.0, 200.0, 210.0)),
            0.90322171236551,
        );
        assert!(
            CDNOW.p_alive(&history(2.0, 30.0, 120.0)) < CDNOW.p_alive(&history(2.0, 30.0, 90.0))
        );
    }

    #[test]
    fn expected_orders_agrees_with_the_papers_formula() {
        close(
            CDNOW.expected_orders(&history(0.0, 0.0, 0.0), 365.0),
            1.4486012675218984,
        );
        close(
            CDNOW.expected_orders(&history(2.0, 30.0, 90.0), 365.0),
            2.082140405104271,
        );
        close(
            CDNOW.expected_orders(&history(50.0, 300.0, 301.0), 365.0),
            39.9314104535169,
        );
        assert_eq!(CDNOW.expected_orders(&history(2.0, 30.0, 90.0), 0.0), 0.0);
    }

    #[test]
    fn no_order_within_is_dead_or_silent() {
        let h = history(2.0, 30.0, 90.0);
        close(CDNOW.no_order_within(&h, 0.0), 1.0);
        close(CDNOW.no_order_within(&h, 30.0), 0.8114456953151018);
        // a long way off, only the chance of having stopped is left
        close(CDNOW.no_order_within(&h, 1e12), 1.0 - CDNOW.p_alive(&h));
    }

    #[test]
    fn gamma_gamma_shrinks_the_customers_mean_towards_the_population() {
        close(
            CDNOW.expected_order_value(0.0, 0.0),
            CDNOW.mean_order_value(),
        );
        close(CDNOW.mean_order_value(), 35.24178832116788);
        close(CDNOW.expected_order_value(3.0, 100.0), 91.74325267566309);
    }
}
